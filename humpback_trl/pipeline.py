"""The whole Humpback loop from one recipe folder (Li et al. 2024, Algorithm 1):

    corpus -> myx (backward model) -> augment (M_yx writes instructions) -> m0 (seed model; its SelfCurationCallback
    scores the candidates for iteration 1) -> m1 (seed + A5 of iteration 1; scores for iteration 2) -> ... -> mK

    humpback run recipes/quickstart/ [--from STAGE] [--key value ...]
    humpback run recipes/llama-3.1-8b/loop_multi_gpu.yaml

The folder holds `loop.yaml` (these arguments) and one recipe per stage (corpus, backward, augment, seed, optionally
magpie); every forward model M_k uses seed.yaml with its data extended. Each stage is an `accelerate launch` of
the stage's entry point, printed before it starts, so it can be rerun by hand. A finished stage leaves a marker with
a hash of its command, recipe and upstream hashes: a rerun skips finished stages, resumes an interrupted one
(checkpoints and shards), and redoes, from scratch, a stage whose recipe or inputs changed. `model`,
`backward_model` and `magpie_model` replace the recipes' models on the stages' command lines (so in their hashes).
The report adds to the stages' own reports the corpus funnel, what the backward model wrote and each stage's time.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from humpback_trl.builtin_models import BUILTIN_PREFIX, resolve_model
from humpback_trl.process import run_stage_process
from humpback_trl.reports import length_stats, number_stats, render_markdown, write_report

MARKERS = ".stages"
MAGPIE_USES = ("none", "candidates", "seed")


@dataclass
class LoopArguments:
    output_dir: str = field(default="outputs/humpback", metadata={"help": "One folder per stage goes under it."})
    iterations: int = field(default=2, metadata={"help": "Forward iterations K; the paper's Humpback is M2."})
    accelerate_config: str = field(default="accelerate_configs/cpu.yaml", metadata={"help": "For every stage."})
    num_processes: int = 1
    hub_prefix: str | None = field(
        default=None, metadata={"help": "With push_to_hub: <prefix>-myx, -m0, -candidates, ..."}
    )
    push_to_hub: bool = False
    magpie: str = field(
        default="none",
        metadata={"help": "none | candidates (MAGPIE pairs join the pool and are curated) | seed (added to the seed)."},
    )
    model: str | None = field(
        default=None,
        metadata={"help": "Model of every stage, instead of each recipe's model_name_or_path (part of each hash)."},
    )
    backward_model: str | None = field(
        default=None, metadata={"help": "Model of the backward model and of augmentation, where it differs from model."}
    )
    magpie_model: str | None = field(
        default=None, metadata={"help": "Aligned chat model of the MAGPIE stage, where it differs from model."}
    )

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError("iterations must be at least 1")
        if self.magpie not in MAGPIE_USES:
            raise ValueError(f"magpie must be one of {MAGPIE_USES}, got {self.magpie!r}")


@dataclass
class Stage:
    name: str
    module: str
    recipe: Path
    overrides: list[str]
    upstream: list[str]

    def command(self, loop: LoopArguments) -> list[str]:
        # Corpus preparation is one pass over the documents (global deduplication): never split across processes.
        processes = 1 if self.module == "humpback_trl.scripts.corpus" else loop.num_processes
        return [
            "accelerate", "launch", "--config_file", loop.accelerate_config, "--num_processes", str(processes),
            "-m", self.module, "--config", str(self.recipe), *self.overrides,
        ]  # fmt: skip


def read_recipe(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"The loop needs the recipe {path}")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def plan(folder: Path, loop: LoopArguments) -> list[Stage]:
    """The stages of the loop in order, each with the overrides that chain it to the stages before it."""
    out = Path(loop.output_dir)
    hub = ["--hub_prefix", loop.hub_prefix, "--push_to_hub", "true"] if loop.push_to_hub and loop.hub_prefix else []
    seed_recipe = folder / "seed.yaml"
    seed_data = read_recipe(seed_recipe).get("data") or []
    seed_data = [seed_data] if isinstance(seed_data, str) else [str(item) for item in seed_data]
    magpie_pairs = str(out / "magpie" / "magpie.jsonl")
    if loop.magpie == "seed":
        seed_data.append(magpie_pairs)
    candidates = [str(out / "augment" / "candidates.jsonl")]
    if loop.magpie == "candidates":
        candidates.append(magpie_pairs)
    with_magpie = ["magpie"] if loop.magpie != "none" else []
    # Overrides go on each stage's command line, so they are part of its hash and a changed model reruns it.
    forward_model = model_override(loop.model)
    backward_model = model_override(loop.backward_model or loop.model)
    magpie_model = model_override(loop.magpie_model or loop.model)
    stages = [
        Stage(
            "corpus", "humpback_trl.scripts.corpus", folder / "corpus.yaml", ["--output_dir", str(out / "corpus")], []
        ),
        Stage(
            "myx",
            "humpback_trl.scripts.sft",
            folder / "backward.yaml",
            ["--output_dir", str(out / "myx"), *backward_model, *hub],
            [],
        ),
        Stage(
            "augment",
            "humpback_trl.scripts.augment",
            folder / "augment.yaml",
            [
                "--corpus",
                str(out / "corpus" / "dataset"),
                "--adapter",
                str(out / "myx"),
                "--output_dir",
                str(out / "augment"),
                *backward_model,
                *hub,
            ],
            ["corpus", "myx"],
        ),
    ]
    if with_magpie:
        stages.append(
            Stage(
                "magpie",
                "humpback_trl.scripts.magpie",
                folder / "magpie.yaml",
                ["--output_dir", str(out / "magpie"), *magpie_model, *hub],
                [],
            )
        )
    for k in range(loop.iterations + 1):
        data = seed_data + ([str(out / f"m{k - 1}" / "curation" / "a5.jsonl")] if k else [])
        curation = ["--curate_candidates", *candidates] if k < loop.iterations else []
        upstream = (["augment"] if k < loop.iterations else []) + ([f"m{k - 1}"] if k else []) + with_magpie
        stages.append(
            Stage(
                f"m{k}",
                "humpback_trl.scripts.sft",
                seed_recipe,
                [
                    "--output_dir",
                    str(out / f"m{k}"),
                    "--iteration",
                    str(k),
                    *(["--data", *data] if data else []),
                    *curation,
                    *forward_model,
                    *hub,
                ],
                upstream,
            )
        )
    return stages


def model_override(name: str | None) -> list[str]:
    return ["--model_name_or_path", name] if name else []


def stage_model(stage: Stage) -> str | None:
    """The base model a stage loads: its override, else its recipe's (augment's comes from its adapter)."""
    if "--model_name_or_path" in stage.overrides:
        return stage.overrides[stage.overrides.index("--model_name_or_path") + 1]
    return read_recipe(stage.recipe).get("model_name_or_path")


def prepare_models(stages: list[Stage]) -> float:
    """Resolve built-in model names once, before any stage starts, so a first-use conversion is timed on its own
    instead of inside (and racing between) the stages; returns the seconds it took."""
    start = time.perf_counter()
    for name in dict.fromkeys(filter(None, map(stage_model, stages))):
        if name.startswith(BUILTIN_PREFIX):
            print(f"[humpback] model {name} -> {resolve_model(name)}", flush=True)
    return round(time.perf_counter() - start, 1)


def input_fingerprints(stage: Stage) -> dict[str, str]:
    """Size and modification time of the local files a stage's recipe names (seed data, a local corpus), so that
    editing them reruns the stage; outputs of upstream stages are covered by the upstream hashes instead."""
    config = read_recipe(stage.recipe)
    names = [config.get(key) for key in ("data", "source", "oasst_seed", "corpus")]
    paths = [Path(n) for item in names if item for n in ([item] if isinstance(item, str) else item)]
    return {str(p): f"{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths if p.is_file()}


def stage_hash(stage: Stage, loop: LoopArguments, upstream_hashes: list[str]) -> str:
    payload = {
        "module": stage.module,
        "recipe": stage.recipe.read_text(encoding="utf-8"),
        "overrides": stage.overrides,
        "accelerate": Path(loop.accelerate_config).read_text(encoding="utf-8"),
        "upstream": upstream_hashes,
        "inputs": input_fingerprints(stage),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def marker_path(loop: LoopArguments, stage: Stage) -> Path:
    return Path(loop.output_dir) / MARKERS / f"{stage.name}.json"


def read_marker(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_marker(path: Path, digest: str, status: str, command: list[str], seconds: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    marker = {"hash": digest, "status": status, "command": shlex.join(command), "seconds": seconds}
    tmp.write_text(json.dumps(marker) + "\n")
    tmp.replace(path)


def stage_output(loop: LoopArguments, stage: Stage) -> Path:
    return Path(loop.output_dir) / stage.name


def run_stage(stage: Stage, loop: LoopArguments, digest: str, force: bool) -> str:
    """Run, resume or skip one stage; returns what happened."""
    marker = marker_path(loop, stage)
    previous = read_marker(marker)
    if previous and previous["hash"] == digest and previous["status"] == "done" and not force:
        print(f"[humpback] {stage.name}: up to date, skipped")
        return "skipped"
    resumed = bool(previous and previous["hash"] == digest and not force)
    if not resumed and stage_output(loop, stage).exists():
        # Outputs of another recipe, input or a forced restart: never resume from them.
        shutil.rmtree(stage_output(loop, stage))
    command = stage.command(loop)
    print(f"[humpback] {stage.name}: {'resuming' if resumed else 'running'}\n  {shlex.join(command)}", flush=True)
    write_marker(marker, digest, "started", command)
    start = time.perf_counter()
    returncode = run_stage_process([sys.executable, "-m", "accelerate.commands.launch", *command[2:]])
    if returncode:
        raise SystemExit(
            f"[humpback] stage {stage.name} failed with exit code {returncode}; fix the cause and run the same "
            "command again: finished stages are skipped and this one resumes."
        )
    seconds = round(time.perf_counter() - start, 1)
    write_marker(marker, digest, "done", command, seconds)
    print(f"[humpback] {stage.name} finished in {seconds:.0f} s", flush=True)
    return "resumed" if resumed else "ran"


def run_loop(folder: str | Path, loop: LoopArguments, start_from: str | None = None) -> dict[str, Any]:
    folder = Path(folder)
    stages = plan(folder, loop)
    names = [stage.name for stage in stages]
    if start_from is not None and start_from not in names:
        raise ValueError(f"--from {start_from!r} is not a stage of this loop; stages: {names}")
    model_seconds = prepare_models(stages)
    hashes: dict[str, str] = {}
    forced: set[str] = set()
    for stage in stages:
        # --from restarts that stage and what depends on it, not independent stages after it in the list.
        if stage.name == start_from or forced.intersection(stage.upstream):
            forced.add(stage.name)
        hashes[stage.name] = stage_hash(stage, loop, [hashes[name] for name in stage.upstream])
        run_stage(stage, loop, hashes[stage.name], force=stage.name in forced)
    report = loop_report(loop, stages)
    report["stage_seconds"] = {"models (resolve / convert)": model_seconds, **report["stage_seconds"]}
    write_report(report, loop.output_dir, "Humpback data funnel")
    return report


EXAMPLES = 5  # backward-model instructions shown beside their segments


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _rows(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def backward_output(candidates: list[dict[str, Any]], segments: int) -> dict[str, Any]:
    """What the backward model wrote: how many instructions, how long, how many are questions, and examples spread
    over the pool, each beside the first line (the header) of the segment it was written for."""
    instructions = [row["instruction"] for row in candidates]
    picks = sorted({round(i * (len(candidates) - 1) / (EXAMPLES - 1)) for i in range(EXAMPLES)}) if candidates else []
    return {
        "segments": segments,
        "instructions": len(instructions),
        "questions (end with ?)": sum(text.rstrip().endswith("?") for text in instructions),
        "instruction_chars": length_stats(instructions),
        "instruction_words": number_stats([len(text.split()) for text in instructions]),
        "examples": [
            {"segment": first_line(candidates[i]["output"]), "instruction": candidates[i]["instruction"]} for i in picks
        ],
    }


def loop_report(loop: LoopArguments, stages: list[Stage]) -> dict[str, Any]:
    """Seed, documents, candidates; the corpus funnel; what the backward model wrote; per iteration the curation
    funnel and the size of M_k's training set; each stage's wall time."""
    out = Path(loop.output_dir)
    corpus = _json(out / "corpus" / "corpus_counts.json")
    augment = _json(out / "augment" / "report.json")
    report: dict[str, Any] = {
        "seed": sum(row["source"] == "seed" for row in _rows(out / "m0" / "training_data.jsonl")),
        "documents": corpus["documents_read"],
        "segments": corpus["segments_kept"],
        "candidates": augment["candidates"],
    }
    if loop.magpie != "none":
        report["magpie_pairs"] = len(_rows(out / "magpie" / "magpie.jsonl"))
    # Every filter's count, then the cap augmentation applied (max_segments) and what it wrote instructions for.
    report["corpus_funnel"] = {**corpus, "segments_augmented": augment["segments"]}
    report["backward_model"] = backward_output(_rows(out / "augment" / "candidates.jsonl"), augment["segments"])
    report["iterations"] = [
        {
            **_json(out / f"m{k - 1}" / "curation" / "report.json")["iterations"][0],
            "trains": f"m{k}",
            "training_pairs": len(_rows(out / f"m{k}" / "training_data.jsonl")),
        }
        for k in range(1, loop.iterations + 1)
    ]
    # The wall time of the run that finished each stage (a skipped stage keeps the time it took when it ran).
    report["stage_seconds"] = {stage.name: read_marker(marker_path(loop, stage)).get("seconds") for stage in stages}
    report["artifacts"] = {
        "backward model": str(out / "myx"),
        **{f"M{k}": str(out / f"m{k}") for k in range(loop.iterations + 1)},
        "candidates": str(out / "augment" / "candidates.jsonl"),
        **{
            f"A5 iteration {k}": str(out / f"m{k - 1}" / "curation" / "a5.jsonl") for k in range(1, loop.iterations + 1)
        },
    }
    return report


def print_summary(report: dict[str, Any], output_dir: str) -> None:
    print(render_markdown({k: v for k, v in report.items() if k != "artifacts"}, "Humpback data funnel"))
    print("Artifacts:")
    for name, path in report["artifacts"].items():
        print(f"  {name:<20} {path}")
    print(f"  {'report':<20} {Path(output_dir) / 'report.md'} (+ report.json, scores.png)")
