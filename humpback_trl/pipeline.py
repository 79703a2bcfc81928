"""The whole Humpback loop from one recipe folder (Li et al. 2024, Algorithm 1):

    corpus -> myx (backward model) -> augment (M_yx writes instructions) -> m0 (seed model) -> curate-1 (M0 scores
    the candidates) -> m1 (seed + A5 of iteration 1) -> curate-2 (M1 scores) -> ... [-> m1-random | m1-all] -> mK
    [-> preferences -> mK-dpo | mK-kto] [-> eval (every model answers one instruction set; a judge that is none of
    them, the run's base model by default, compares them with its accuracy on labelled pairs)]

    humpback run recipes/quickstart/ [--from STAGE] [--key value ...]
    humpback run recipes/llama-3.1-8b/loop_multi_gpu.yaml

The folder holds `loop.yaml` (these arguments) and one recipe per stage (corpus, backward, augment, seed, curate,
and as used magpie, preferences, dpo / kto, eval); every forward model M_k uses seed.yaml with its data extended.
Each stage is an `accelerate launch` of the stage's entry point, printed before it starts, so it can be rerun by hand.
Curation is its own stage (`humpback curate` with M_{k-1}'s adapter), so training never scores and a changed
augmentation does not retrain M0.

A finished stage leaves a marker with a hash of what decides its result: the entry point, the recipe's parsed values
with the stage's overrides (not comments, key order, hub, logging or process-count settings), the accelerate config's
values, the content of the local files it reads, and the upstream stages' hashes. A rerun skips finished stages,
resumes an interrupted one (checkpoints and shards), and moves the output of a stage whose hash changed aside
(`<stage>.old-<time>`) before running it again. `--push_to_hub true` on a finished run publishes each stage (its
command resumes: no training step, no scoring) instead of redoing it. The output folder is locked while a run writes
it. `model`, `backward_model`, `magpie_model` and `judge_model` replace the recipes' models on the stages' command
lines (so in their hashes). On a plumbing model (builtin:tiny-llama: random weights) the curate stages run without
instruction checks and the GRPO stage with allow_weak_judge, so every stage carries data; the run says so in one line
and in its report. The report adds to the stages' own reports the corpus funnel, what the backward model wrote, the
evaluation table and each stage's time.

On several machines every machine runs the same `humpback run` with its own `--machine_rank` (and `--num_machines`,
`--main_process_ip`): machine 0 runs the loop as above and tells the others each decision; they launch their part
of every multi-process stage and write nothing of the loop's own (machines.py says why).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from humpback_trl.ablation import ABLATION_FILES, BASELINE_NAMES, ablation_verdict
from humpback_trl.builtin_models import BUILTIN_PREFIX, is_plumbing_model, resolve_model
from humpback_trl.configs import LoopArguments
from humpback_trl.errors import MissingFileError, UserError
from humpback_trl.machines import ALONE, Machines
from humpback_trl.process import run_stage_process
from humpback_trl.reports import length_stats, number_stats, render_markdown, write_report
from humpback_trl.shards import write_atomic
from humpback_trl.stage_outputs import (
    AUGMENT,
    CORPUS,
    CURATE,
    EVAL,
    GRPO,
    MAGPIE,
    PREFERENCES,
    REPORT,
    REPORT_MARKDOWN,
    REWRITE,
    TRAINING,
    Outputs,
)

MARKERS = ".stages"
LOCK_FILE = ".humpback.lock"
INPUT_DIGESTS = ".input_digests.json"  # content hashes of input files by path, size and mtime
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Settings that change where results go or how a run is watched, not the results: they stay out of the stage hash,
# so publishing a finished run, or watching it differently, redoes nothing.
VOLATILE_PREFIXES = ("hub_", "logging_", "log_")
VOLATILE_KEYS = frozenset(
    {"push_to_hub", "report_to", "run_name", "disable_tqdm", "output_dir", "num_processes", "overwrite_output_dir"}
)
# Recipe keys that name what a stage reads: local files and folders among their values are hashed by content.
INPUT_KEYS = frozenset(
    {"data", "source", "oasst_seed", "corpus", "candidates", "instructions", "scored_pool", "model_name_or_path",
     "adapter", "sft_adapter", "scorer_adapter", "calibration_dev_set", "curation_judges", "judge", "reference",
     "tokenizer_name_or_path", "rewrite_model", "judge_model"}
)  # fmt: skip
# Keys of an accelerate config that say how many processes run where, not what they compute.
LAUNCH_KEYS = frozenset(
    {"num_processes", "num_machines", "machine_rank", "main_process_ip", "main_process_port", "same_network",
     "rdzv_backend", "main_training_function", "gpu_ids", "debug"}
)  # fmt: skip


@dataclass
class Stage:
    name: str
    module: str
    recipe: Path
    overrides: list[str]
    upstream: list[str]
    pushes: bool = False
    evaluated: bool = False  # a forward model the eval stage compares
    outputs: Outputs = Outputs(report=None)  # what it writes in its folder (stage_outputs.py)
    processes: int | None = None  # None: the loop's num_processes

    def command(self, loop: LoopArguments, accelerate_config: Path) -> list[str]:
        processes = self.processes or loop.num_processes
        on_this_machine = processes if self.processes == 1 else processes // loop.num_machines
        hub = ["--hub_prefix", loop.hub_prefix, "--push_to_hub", "true"] if self.pushes and publishing(loop) else []
        return [
            "accelerate", "launch", "--config_file", str(accelerate_config), "--num_processes", str(processes),
            *machine_options(loop, alone=self.processes == 1),
            "--num_cpu_threads_per_process", str(cpu_threads_per_process(on_this_machine)),
            "-m", self.module, "--config", str(self.recipe), *self.overrides, *hub,
        ]  # fmt: skip


def machine_options(loop: LoopArguments, alone: bool) -> list[str]:
    """accelerate's options on several machines: a stage spans all of them (each machine launches it with its own
    rank; num_processes counts the processes of all), except a single-process one, which machine 0 runs alone."""
    if loop.num_machines == 1:
        return []
    if alone:
        return ["--num_machines", "1"]
    return [
        "--num_machines", str(loop.num_machines), "--machine_rank", str(loop.machine_rank),
        "--main_process_ip", str(loop.main_process_ip), "--main_process_port", str(loop.main_process_port),
    ]  # fmt: skip


def cpu_threads_per_process(processes: int) -> int:
    """Torch threads for each of a stage's processes: OMP_NUM_THREADS when set, else this machine's cores shared out.

    Without `--num_cpu_threads_per_process`, accelerate sets OMP_NUM_THREADS=1 in every process it starts unless
    its config says `use_cpu: true` (which ours cannot: see accelerate_configs/cpu.yaml), so a CPU stage would use
    one core of many: the 2-core demo ran every stage at half speed.
    """
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, processes))


def publishing(loop: LoopArguments) -> bool:
    return bool(loop.push_to_hub and loop.hub_prefix)


def read_recipe(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MissingFileError(f"The loop needs the recipe {path}")
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(config, dict):
        raise UserError(f"{path}: a recipe is a mapping of option: value, got {type(config).__name__}")
    return config


def find_accelerate_config(name: str, folder: Path) -> Path:
    """The accelerate config as given, else beside the recipes or in the project, so `humpback run` works from any
    working directory with the recipes' relative `accelerate_configs/...`."""
    path = Path(name).expanduser()
    places = [path] if path.is_absolute() else [path, folder / path, folder.parent / path, folder.parent.parent / path]
    places += [] if path.is_absolute() else [PROJECT_ROOT / path]
    for place in places:
        if place.is_file():
            return place.resolve()
    raise MissingFileError(
        f"accelerate_config {name!r} not found (looked in: {', '.join(str(p) for p in places)}); "
        "set --accelerate_config to a file"
    )


def _listed(value: Any) -> list[str]:
    """A recipe value that may be one string or a list of them, as a list."""
    if isinstance(value, str):
        return [value] if value else []
    return [str(item) for item in value] if isinstance(value, list | tuple) else []


def plan(folder: Path, loop: LoopArguments) -> list[Stage]:
    """The stages of the loop in order, each with the overrides that chain it to the stages before it."""
    out = Path(loop.output_dir)
    seed_recipe = folder / "seed.yaml"
    seed_data = _listed(read_recipe(seed_recipe).get("data"))
    magpie_pairs = str(out / "magpie" / MAGPIE.pairs)
    if loop.magpie == "seed":
        seed_data.append(magpie_pairs)
    candidates = [str(out / "augment" / AUGMENT.candidates)]
    if loop.magpie == "candidates":
        candidates.append(magpie_pairs)
    # Overrides go on each stage's command line, so they are part of its hash and a changed model reruns it.
    forward_model = model_override(loop.model)
    backward_model = model_override(loop.backward_model or loop.model)
    magpie_model = model_override(loop.magpie_model or loop.model)
    stages = [
        # Corpus preparation is one pass over the documents (global deduplication): never split across processes.
        Stage(
            "corpus", "humpback_trl.scripts.corpus", folder / "corpus.yaml", ["--output_dir", str(out / "corpus")], [],
            outputs=CORPUS, processes=1,
        ),
        Stage(
            "myx", "humpback_trl.scripts.sft", folder / "backward.yaml",
            ["--output_dir", str(out / "myx"), *backward_model], [], pushes=True, outputs=TRAINING,
        ),
        Stage(
            "augment", "humpback_trl.scripts.augment", folder / "augment.yaml",
            ["--corpus", str(out / "corpus" / CORPUS.dataset), "--adapter", str(out / "myx"),
             "--output_dir", str(out / "augment"), *backward_model],
            ["corpus", "myx"], pushes=True, outputs=AUGMENT,
        ),
    ]  # fmt: skip
    if loop.magpie != "none":
        stages.append(
            Stage(
                "magpie", "humpback_trl.scripts.magpie", folder / "magpie.yaml",
                ["--output_dir", str(out / "magpie"), *magpie_model], [], pushes=True, outputs=MAGPIE,
            )
        )  # fmt: skip
    seed_upstream = ["magpie"] if loop.magpie == "seed" else []
    pool_upstream = ["augment"] + (["magpie"] if loop.magpie == "candidates" else [])
    # The stages that write the pool's instructions are planned by now: their models decide the curate stages' checks.
    checks = ["--instruction_checks", "none"] if plumbing_writers(stages, loop) else []
    for k in range(loop.iterations + 1):
        if k:
            stages.append(curate_stage(folder, out, k, candidates, pool_upstream, loop, forward_model, checks))
        if k and loop.rewrite != "none":
            stages.append(rewrite_stage(folder, out, k, loop, forward_model))
        # The ablation's M1-random / M1-all needs curate-1 only; it trains just before M_K, so the stages after M_K
        # (preferences, eval) still follow the loop's last model.
        if k == loop.iterations and loop.ablation != "none":
            stages.append(ablation_stage(seed_recipe, out, seed_data, seed_upstream, loop.ablation, forward_model))
        data = seed_data + (curated_data(folder, out, k, loop.rewrite) if k else [])
        upstream = [f"curate-{k}"] + ([f"rewrite-{k}"] if loop.rewrite != "none" else []) if k else []
        stages.append(
            Stage(
                f"m{k}", "humpback_trl.scripts.sft", seed_recipe,
                ["--output_dir", str(out / f"m{k}"), "--iteration", str(k), *(["--data", *data] if data else []),
                 *forward_model],
                seed_upstream + upstream, pushes=True, evaluated=True, outputs=TRAINING,
            )
        )  # fmt: skip
    if loop.preference != "none":
        stages += preference_stages(folder, out, loop, forward_model)
    if loop.evaluate:
        stages.append(eval_stage(folder, out, [stage.name for stage in stages if stage.evaluated], loop))
        if loop.preference == "grpo":
            stages[-1].overrides += independent_eval_methods(folder, loop)
    return stages


def curate_stage(
    folder: Path,
    out: Path,
    k: int,
    candidates: list[str],
    upstream: list[str],
    loop: LoopArguments,
    model: list[str],
    checks: list[str],
) -> Stage:
    """curate-k: M_{k-1} (its adapter merged into its base) scores the pool; its A5 is M_k's added data."""
    scorer = model_override(loop.judge_model) if loop.judge_model else ["--adapter", str(out / f"m{k - 1}"), *model]
    return Stage(
        f"curate-{k}", "humpback_trl.scripts.curate", folder / "curate.yaml",
        ["--candidates", *candidates, "--iteration", str(k), "--output_dir", str(out / f"curate-{k}"), *scorer,
         *checks],
        upstream + ([] if loop.judge_model else [f"m{k - 1}"]), pushes=True, outputs=CURATE,
    )  # fmt: skip


def rewrite_stage(folder: Path, out: Path, k: int, loop: LoopArguments, model: list[str]) -> Stage:
    """rewrite-k: an aligned chat model rewrites curate-k's curated split; M_{k-1} (or the fixed judge), the scorer of
    curate-k, checks each rewrite against its source and scores it."""
    recipe = folder / "rewrite.yaml"
    writer = loop.rewrite_model or read_recipe(recipe).get("rewrite_model") or base_model(folder, loop)
    scorer = model_override(loop.judge_model) if loop.judge_model else ["--adapter", str(out / f"m{k - 1}"), *model]
    return Stage(
        f"rewrite-{k}", "humpback_trl.scripts.rewrite", recipe,
        ["--pairs", str(out / f"curate-{k}"), "--iteration", str(k), "--output_dir",
         str(out / f"rewrite-{k}"), *(["--rewrite_model", writer] if writer else []), *scorer],
        [f"curate-{k}"] + ([] if loop.judge_model else [f"m{k - 1}"]), pushes=True, outputs=REWRITE,
    )  # fmt: skip


def curated_data(folder: Path, out: Path, k: int, rewrite: str) -> list[str]:
    """What M_k adds to the seed: curate-k's A5; with `rewrite: replace` the rewritten pairs instead (accepted
    rewrites, and per on_unfaithful the originals of rejected ones); with `add` the curated split and the accepted
    rewrites."""
    if rewrite == "none":
        return [str(out / f"curate-{k}" / CURATE.a5)]
    if rewrite == "replace":
        return [str(out / f"rewrite-{k}" / REWRITE.rewritten)]
    split = read_recipe(folder / "rewrite.yaml").get("curated_split", "a5")
    return [str(out / f"curate-{k}" / CURATE.split_files[split]), str(out / f"rewrite-{k}" / REWRITE.accepted)]


def training_data_label(loop: LoopArguments) -> str:
    """What M_k trained on, in the words of the report (the files are curated_data's)."""
    seed = "seed + MAGPIE" if loop.magpie == "seed" else "seed"
    added = {"none": "A5", "replace": "rewritten A5", "add": "A5 + accepted rewrites"}[loop.rewrite]
    return f"{seed} + {added}"


def preference_stages(folder: Path, out: Path, loop: LoopArguments, model: list[str]) -> list[Stage]:
    """preferences (M_K answers and scores: DPO pairs, or KTO rows from the last scored pool) -> mK-dpo | mK-kto;
    or mK-grpo alone (online: M_K answers the last scored pool's instructions during training)."""
    if loop.preference == "grpo":
        return [grpo_stage(folder, out, loop, model)]
    kind, last = loop.preference, f"m{loop.iterations}"
    scored = str(out / f"curate-{loop.iterations}" / CURATE.scored)
    source = ["--instructions", scored] if kind == "dpo" else ["--scored_pool", scored]
    return [
        Stage(
            "preferences", "humpback_trl.scripts.preferences", folder / "preferences.yaml",
            ["--kind", kind, "--adapter", str(out / last), *source, "--output_dir", str(out / "preferences"), *model],
            [last, f"curate-{loop.iterations}"], pushes=True, outputs=PREFERENCES[kind],
        ),
        Stage(
            f"{last}-{kind}", f"humpback_trl.scripts.{kind}", folder / f"{kind}.yaml",
            ["--sft_adapter", str(out / last), "--sft_stage", last, "--data",
             str(out / "preferences" / PREFERENCES[kind].data), "--output_dir", str(out / f"{last}-{kind}"), *model],
            ["preferences"], pushes=True, evaluated=True, outputs=TRAINING,
        ),
    ]  # fmt: skip


def grpo_stage(folder: Path, out: Path, loop: LoopArguments, model: list[str]) -> Stage:
    """mK-grpo: M_K trained online with GRPO on the instructions of the last scored pool, rewarded by a fixed judge
    (grpo.yaml's judge_model, the loop's judge_model, else the base model) whose accuracy gates the stage."""
    last, scored = f"m{loop.iterations}", str(out / f"curate-{loop.iterations}" / CURATE.scored)
    judge = ["--judge_model", loop.judge_model] if loop.judge_model else []
    weak = ["--allow_weak_judge", "true"] if loop.allow_weak_judge or plumbing_judge(folder, loop) else []
    return Stage(
        f"{last}-grpo", "humpback_trl.scripts.grpo", folder / "grpo.yaml",
        ["--sft_adapter", str(out / last), "--sft_stage", last, "--prompts", scored,
         "--output_dir", str(out / f"{last}-grpo"), *judge, *weak, *model],
        [last, f"curate-{loop.iterations}"], pushes=True, evaluated=True, outputs=GRPO,
    )  # fmt: skip


def independent_eval_methods(folder: Path, loop: LoopArguments) -> list[str]:
    """`--judge_method` for the eval stage of a GRPO loop: where the eval judge is the GRPO reward judge, none of
    the methods that rewarded the policy (it would grade the GRPO model by the score it was trained to raise)."""
    from humpback_trl.grpo_training import GRPOArguments  # loads torch; only a GRPO loop needs it
    from humpback_trl.judges import JUDGE_METHODS

    grpo, evaluation = read_recipe(folder / "grpo.yaml"), read_recipe(folder / "eval.yaml")
    eval_judge = evaluation.get("judge") or loop.judge_model or base_model(folder, loop)
    if reward_judge(folder, loop) != eval_judge:
        return []
    rewards = _listed(grpo.get("rewards")) or GRPOArguments.__dataclass_fields__["rewards"].default_factory()
    methods = _listed(evaluation.get("judge_method")) or ["likelihood"]
    kept = [method for method in methods if method not in rewards]
    return ["--judge_method", *(kept or [method for method in JUDGE_METHODS if method not in rewards])]


def base_model(folder: Path, loop: LoopArguments) -> str | None:
    """The run's base model: the loop's `model`, else seed.yaml's (the model every M_k is trained from)."""
    return loop.model or read_recipe(folder / "seed.yaml").get("model_name_or_path")


def reward_judge(folder: Path, loop: LoopArguments) -> str | None:
    """The model the GRPO stage's rewards judge with: the loop's judge_model, else grpo.yaml's, else the base model."""
    return loop.judge_model or read_recipe(folder / "grpo.yaml").get("judge_model") or base_model(folder, loop)


def plumbing_writers(stages: list[Stage], loop: LoopArguments) -> list[str]:
    """The plumbing models (builtin_models.is_plumbing_model) among the models of the stages that write the pool's
    instructions (myx, the backward model; magpie when its pairs join the pool). Their instructions are noise that
    the instruction checks reject to the last pair, which would leave A5 and every stage after it empty: the curate
    stages run without checks instead."""
    writers = {"myx", "magpie"} if loop.magpie == "candidates" else {"myx"}
    models = [stage_model(stage) for stage in stages if stage.name in writers]
    return list(dict.fromkeys(name for name in models if is_plumbing_model(name)))


def plumbing_judge(folder: Path, loop: LoopArguments) -> str | None:
    """The GRPO reward judge when it is a plumbing model: at chance by construction, the gate would refuse every
    reward, so the stage trains with allow_weak_judge (its card and report mark the reward WEAK)."""
    judge = reward_judge(folder, loop) if loop.preference == "grpo" else None
    return judge if is_plumbing_model(judge) else None


def plumbing_note(folder: Path, loop: LoopArguments) -> str | None:
    """One line saying which plumbing models the run uses and what the loop relaxes for them, or None: printed when
    the run is planned and kept in the loop report. No ": " in it, which would read as a `[humpback] stage: status`
    line."""
    writers, judge = plumbing_writers(plan(folder, loop), loop), plumbing_judge(folder, loop)
    relaxed = ["the curate stages run with --instruction_checks none"] if writers else []
    relaxed += ["the GRPO stage with --allow_weak_judge true (its reward marked WEAK)"] if judge else []
    if not relaxed:
        return None
    names = list(dict.fromkeys([*writers, *([judge] if judge else [])]))
    verb = "is a plumbing model" if len(names) == 1 else "are plumbing models"
    return (
        f"{' and '.join(names)} {verb} (random weights, so the text is noise and the judges are at chance); "
        f"{' and '.join(relaxed)}, so every stage carries data"
    )


def ablation_stage(
    seed_recipe: Path, out: Path, seed_data: list[str], upstream: list[str], kind: str, model: list[str]
) -> Stage:
    """m1-random | m1-all: M1's recipe on the seed plus curate-1's random sample of A5's size, or every candidate
    that passed the checks (ablation.py)."""
    name = f"m1-{kind}"
    data = [*seed_data, str(out / "curate-1" / ABLATION_FILES[kind])]
    return Stage(
        name, "humpback_trl.scripts.sft", seed_recipe,
        ["--output_dir", str(out / name), "--iteration", "1", "--stage", name, "--data", *data, *model],
        [*upstream, "curate-1"], pushes=True, evaluated=True, outputs=TRAINING,
    )  # fmt: skip


def eval_judge(folder: Path, loop: LoopArguments) -> list[str]:
    """`--judge` for the eval stage: eval.yaml's own `judge` where it names one, else the loop's judge_model, else
    the run's base model (the model the compared adapters were trained from), never one of the compared models."""
    if read_recipe(folder / "eval.yaml").get("judge"):
        return []
    base = loop.judge_model or base_model(folder, loop)
    return ["--judge", base] if base else []


def eval_stage(folder: Path, out: Path, models: list[str], loop: LoopArguments) -> Stage:
    names = [name.upper() if name[1:].isdigit() else "M" + name[1:] for name in models]
    return Stage(
        "eval", "humpback_trl.scripts.eval", folder / "eval.yaml",
        ["--models", *(str(out / name) for name in models), "--model_names", *names, "--output_dir", str(out / "eval"),
         *eval_judge(folder, loop)],
        models, outputs=EVAL,
    )  # fmt: skip


def model_override(name: str | None) -> list[str]:
    return ["--model_name_or_path", name] if name else []


def override_values(overrides: list[str]) -> dict[str, Any]:
    """`--key v1 v2 --flag v` as {key: [v1, v2], flag: v}."""
    values: dict[str, Any] = {}
    key = None
    for token in overrides:
        if token.startswith("--"):
            key = token[2:]
            values[key] = []
        elif key is not None:
            values[key].append(token)
    return {name: items[0] if len(items) == 1 else items for name, items in values.items()}


def stage_values(stage: Stage) -> dict[str, Any]:
    """The recipe's parsed values with the stage's command-line overrides on top."""
    return {**read_recipe(stage.recipe), **override_values(stage.overrides)}


def stage_model(stage: Stage) -> str | None:
    """The base model a stage loads: its override, else its recipe's (augment's and curate's come from adapters)."""
    return stage_values(stage).get("model_name_or_path")


def prepare_models(stages: list[Stage]) -> float:
    """Resolve built-in model names once, before any stage starts, so a first-use conversion is timed on its own
    instead of inside (and racing between) the stages; returns the seconds it took."""
    start = time.perf_counter()
    for name in dict.fromkeys(filter(None, map(stage_model, stages))):
        if name.startswith(BUILTIN_PREFIX):
            print(f"[humpback] model {name} -> {resolve_model(name)}", flush=True)
    return round(time.perf_counter() - start, 1)


def result_values(values: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value
        for key, value in values.items()
        if key not in VOLATILE_KEYS and not key.startswith(VOLATILE_PREFIXES)
    }


def content_digest(path: Path, cache: dict[str, str]) -> str:
    """sha256 of a file, or of a folder's files and their relative names; `cache` (kept beside the markers) skips
    files whose size and modification time have not changed since they were hashed."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        key = f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        if key not in cache:
            with open(file, "rb") as handle:
                cache[key] = hashlib.file_digest(handle, "sha256").hexdigest()
        digest.update(f"{file.relative_to(path) if path.is_dir() else ''}:{cache[key]}\n".encode())
    return digest.hexdigest()


def input_digests(values: dict[str, Any], out: Path, cache: dict[str, str]) -> dict[str, str]:
    """Content hashes of the local files and folders a stage's values name (seed data, a local corpus, a local
    model); outputs of this run's stages are covered by the upstream hashes instead."""
    names = [name for key in INPUT_KEYS.intersection(values) for name in _listed(values[key])]
    paths = [Path(name).expanduser() for name in names if ":" not in name]
    local = [path for path in paths if path.exists() and not path.resolve().is_relative_to(out.resolve())]
    return {str(path): content_digest(path, cache) for path in local}


def portable(values: dict[str, Any], out: Path) -> dict[str, Any]:
    """Values with this run's output folder written as OUT, so the same run reached by another path hashes alike."""
    prefix = str(out)
    return json.loads(json.dumps(values).replace(json.dumps(prefix)[1:-1], "OUT"))


def stage_hash(
    stage: Stage, loop: LoopArguments, accelerate_config: Path, upstream_hashes: list[str], cache: dict[str, str]
) -> str:
    values = result_values(stage_values(stage))
    launch = yaml.safe_load(accelerate_config.read_text(encoding="utf-8")) or {}
    out = Path(loop.output_dir)
    payload = {
        "module": stage.module,
        "values": portable(values, out),
        "accelerate": {key: value for key, value in launch.items() if key not in LAUNCH_KEYS},
        "upstream": upstream_hashes,
        "inputs": input_digests(values, out, cache),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def marker_path(loop: LoopArguments, stage: Stage) -> Path:
    return Path(loop.output_dir) / MARKERS / f"{stage.name}.json"


def read_marker(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, [json.dumps(data) + "\n"])


def stage_output(loop: LoopArguments, stage: Stage) -> Path:
    return Path(loop.output_dir) / stage.name


def move_aside(path: Path) -> Path:
    """Keep the output of a stage that must run again: inputs can change back, and its models took hours."""
    target = path.with_name(f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    suffix = 1
    while target.exists():
        target = path.with_name(f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}")
        suffix += 1
    path.rename(target)
    return target


LABELS = {"publish": "publishing", "resume": "resuming", "run": "running"}  # how a stage's launch is printed


def announce_launch(stage: Stage, action: str, command: list[str]) -> None:
    """The `[humpback] stage: status` line of a launch (run, resume, publish) and its command, on every machine."""
    print(f"[humpback] {stage.name}: {LABELS[action]}\n  {shlex.join(command)}", flush=True)


def decide(previous: dict[str, Any] | None, digest: str, force: bool, loop: LoopArguments, stage: Stage) -> str:
    """skip | publish (done, but not yet pushed to this hub prefix) | resume | run."""
    same = bool(previous and previous["hash"] == digest and not force)
    if same and previous["status"] == "done":
        unpublished = stage.pushes and publishing(loop) and loop.hub_prefix not in previous.get("pushed", [])
        return "publish" if unpublished else "skip"
    return "resume" if same else "run"


def run_stage(
    stage: Stage, loop: LoopArguments, accelerate_config: Path, digest: str, force: bool, machines: Machines | None
) -> str:
    """Run, resume, publish or skip one stage; returns what happened. On several machines the others hear what to do:
    skip it, join its launch (told just before this machine launches it), or nothing, for a stage that runs on this
    machine alone (told once it has finished, so that they start no later stage before it)."""
    marker = marker_path(loop, stage)
    previous = read_marker(marker)
    action = decide(previous, digest, force, loop, stage)
    alone = stage.processes == 1
    if action == "skip":
        if machines:
            machines.tell(stage.name, action)
        print(f"[humpback] {stage.name}: up to date, skipped")
        return "skipped"
    if action == "run" and stage_output(loop, stage).exists():
        # Outputs of another recipe, input or a forced restart: never resume from them, never delete them.
        kept = move_aside(stage_output(loop, stage))
        print(f"[humpback] {stage.name}: its inputs changed; the previous output is kept in {kept}", flush=True)
    command = stage.command(loop, accelerate_config)
    announce_launch(stage, action, command)
    pushed = previous.get("pushed", []) if previous and action == "publish" else []
    base = {"hash": digest, "command": shlex.join(command), "pushed": pushed}
    write_json(marker, {**base, "status": "started", "seconds": previous.get("seconds") if previous else None})
    start = time.perf_counter()
    if machines and not alone:
        machines.tell(stage.name, action)
    launch(stage, command)
    seconds = round(time.perf_counter() - start, 1)
    if action == "publish":  # the stage's time stays the one of the run that made it
        seconds = previous.get("seconds")
    if stage.pushes and publishing(loop):
        pushed = [*pushed, loop.hub_prefix]
    write_json(marker, {**base, "status": "done", "seconds": seconds, "pushed": pushed})
    if machines and alone:
        machines.tell(stage.name, ALONE)
    print(f"[humpback] {stage.name} finished in {time.perf_counter() - start:.0f} s", flush=True)
    return {"publish": "published", "resume": "resumed", "run": "ran"}[action]


def launch(stage: Stage, command: list[str]) -> None:
    """Run a stage's command to its end (it dies with this process); a failure ends the loop, saying how to go on."""
    returncode = run_stage_process([sys.executable, "-m", "accelerate.commands.launch", *command[2:]])
    if returncode:
        raise SystemExit(
            f"[humpback] stage {stage.name} failed with exit code {returncode}; fix the cause and run the same "
            "command again: finished stages are skipped and this one resumes."
        )


def follow_machine_0(stages: list[Stage], loop: LoopArguments, accelerate_config: Path) -> dict[str, Any]:
    """A machine other than machine 0: its part of every multi-process stage machine 0 launches, and nothing else
    (no lock, marker or report of its own); returns machine 0's loop report."""
    prepare_models(stages)  # into this machine's cache, which its stage processes load from
    machines = Machines(loop, stages)
    for stage in stages:
        action = machines.action(stage.name)
        if action == "skip":
            print(f"[humpback] {stage.name}: up to date, skipped", flush=True)
        elif action == ALONE:
            print(f"[humpback] {stage.name}: run {ALONE}", flush=True)
        else:
            command = stage.command(loop, accelerate_config)
            announce_launch(stage, action, command)
            launch(stage, command)
    return machines.report()


@contextmanager
def locked(output_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the output folder while a run writes it; a second run fails at once and names the
    holder. flock is released by the kernel when the holder dies, so a killed run never leaves a stale lock."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(
                f"{output_dir} is being written by another humpback run (pid {holder}); wait for it to finish, "
                "stop it, or choose another --output_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def run_loop(folder: str | Path, loop: LoopArguments, start_from: str | None = None) -> dict[str, Any]:
    folder = Path(folder)
    accelerate_config = find_accelerate_config(loop.accelerate_config, folder)
    stages = plan(folder, loop)
    names = [stage.name for stage in stages]
    if start_from is not None and start_from not in names:
        raise UserError(f"--from {start_from!r} is not a stage of this loop; stages: {names}")
    note = plumbing_note(folder, loop)
    if note:
        print(f"[humpback] {note}", flush=True)
    if loop.machine_rank:
        return follow_machine_0(stages, loop, accelerate_config)
    out = Path(loop.output_dir)
    with locked(out):
        model_seconds = prepare_models(stages)
        # Every hash is known before any stage runs: none depends on an output, only on recipes and local inputs.
        cache_path = out / INPUT_DIGESTS
        cache = read_marker(cache_path) or {}
        hashes: dict[str, str] = {}
        forced: set[str] = set()
        for stage in stages:
            # --from restarts that stage and what depends on it, not independent stages after it in the list.
            if stage.name == start_from or forced.intersection(stage.upstream):
                forced.add(stage.name)
            upstream = [hashes[name] for name in stage.upstream]
            hashes[stage.name] = stage_hash(stage, loop, accelerate_config, upstream, cache)
        write_json(cache_path, cache)
        machines = Machines(loop, stages) if loop.num_machines > 1 else None
        for stage in stages:
            run_stage(stage, loop, accelerate_config, hashes[stage.name], stage.name in forced, machines)
        # The plumbing line first: a reader of a plumbing run's report learns before any figure that its data is noise.
        report = {**({"plumbing": note} if note else {}), **loop_report(loop, stages)}
        report["stage_seconds"] = {"models (resolve / convert)": model_seconds, **report["stage_seconds"]}
        write_report(report, loop.output_dir, "Humpback data funnel")
        if machines:
            machines.share_report(report)
    return report


EXAMPLES = 5  # backward-model instructions shown beside their segments


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
    funnel and the size of M_k's training set; the preference data and the evaluation table when the loop made them;
    each stage's wall time."""
    out = Path(loop.output_dir)
    corpus = CORPUS.read_report(out / "corpus")
    augment = AUGMENT.read_report(out / "augment")
    report: dict[str, Any] = {
        "seed": sum(row["source"] == "seed" for row in _rows(out / "m0" / TRAINING.training_data)),
        "documents": corpus["documents_read"],
        "segments": corpus["segments_kept"],
        "candidates": augment["candidates"],
    }
    if loop.magpie != "none":
        report["magpie_pairs"] = MAGPIE.read_report(out / "magpie")["kept"]
    # Every filter's count, then the cap augmentation applied (max_segments) and what it wrote instructions for.
    report["corpus_funnel"] = {**corpus, "segments_augmented": augment["segments"]}
    report["backward_model"] = backward_output(_rows(out / "augment" / AUGMENT.candidates), augment["segments"])
    # A curate stage's report holds its one iteration's funnel: together they are the loop's iterations.
    report["iterations"] = [
        {
            **funnel,
            "trains": f"m{k}",
            "training_pairs": len(_rows(out / f"m{k}" / TRAINING.training_data)),
            "training_data": training_data_label(loop),
        }
        for k in range(1, loop.iterations + 1)
        for funnel in CURATE.read_report(out / f"curate-{k}")["iterations"]
    ]
    if loop.rewrite != "none":
        report.update(rewrite_report_part(out, loop))
    if loop.preference == "grpo":
        report.update(grpo_report_part(out, loop))
    elif loop.preference != "none":
        report["preferences"] = PREFERENCES[loop.preference].read_report(out / "preferences")
    if loop.evaluate:
        report["evaluation"] = EVAL.read_report(out / "eval")
    if loop.evaluate and loop.ablation != "none":
        kind = loop.ablation
        report["ablation"] = ablation_verdict(report["evaluation"], "M1", f"M1-{kind}", kind)
        report[f"curation vs {BASELINE_NAMES[kind]}"] = report["ablation"]["line"]
    else:
        # A selection never compared with random selection says so, rather than leave the question unasked.
        report[f"curation vs {BASELINE_NAMES['random']}"] = not_compared_line(loop)
    # The wall time of the run that finished each stage (a skipped stage keeps the time it took when it ran).
    report["stage_seconds"] = {stage.name: read_marker(marker_path(loop, stage)).get("seconds") for stage in stages}
    # Inside the run's folder, so the report names no local prefix; print_summary shows them under that folder.
    report["artifacts"] = {
        "backward model": "myx",
        "candidates": f"augment/{AUGMENT.candidates}",
        **{f"A5 iteration {k}": f"curate-{k}/{CURATE.a5}" for k in range(1, loop.iterations + 1)},
        **{
            f"rewrites iteration {k}": f"rewrite-{k}/{REWRITE.rewrites}"
            for k in range(1, loop.iterations + 1)
            if loop.rewrite != "none"
        },
        **{stage.name.upper(): stage.name for stage in stages if stage.evaluated},
        **({"preference data": "preferences"} if loop.preference in ("dpo", "kto") else {}),
        **({"GRPO reward and length": f"m{loop.iterations}-grpo/{GRPO.plot}"} if loop.preference == "grpo" else {}),
        **({"evaluation": f"eval/{EVAL.markdown}"} if loop.evaluate else {}),
    }
    return report


def not_compared_line(loop: LoopArguments) -> str:
    """What the report says of a run that did not compare curation with random selection, and how to make it."""
    why = "ablation: none" if loop.ablation == "none" else "evaluate: false"
    return (
        f"not measured ({why} in loop.yaml); `ablation: random` with `evaluate: true` trains M1-random on a random "
        "sample of A5's size with M1's recipe and compares the two"
    )


def grpo_report_part(out: Path, loop: LoopArguments) -> dict[str, Any]:
    """The GRPO stage's judges and its reward and length per step (a table in report.md), and its whole report."""
    from humpback_trl.grpo_training import summary  # loads torch; only a GRPO loop needs it

    report = GRPO.read_report(out / f"m{loop.iterations}-grpo")
    return {"preferences": summary(report), "grpo": report}


def rewrite_report_part(out: Path, loop: LoopArguments) -> dict[str, Any]:
    """Per rewrite-k its funnel (a line each, which report.md shows) and its whole report under `rewrite`."""
    from humpback_trl.rewrite import funnel_line  # the rewrite module loads torch; only a rewriting loop needs it

    reports = [REWRITE.read_report(out / f"rewrite-{k}") for k in range(1, loop.iterations + 1)]
    lines = {f"rewrite-{k} ({loop.rewrite})": funnel_line(part) for k, part in enumerate(reports, start=1)}
    return {**lines, "rewrite": [{"iteration": k, **part} for k, part in enumerate(reports, start=1)]}


def print_summary(report: dict[str, Any], output_dir: str) -> None:
    print(render_markdown({k: v for k, v in report.items() if k != "artifacts"}, "Humpback data funnel"))
    print("Artifacts:")
    for name, path in report["artifacts"].items():
        print(f"  {name:<20} {Path(output_dir) / path}")
    print(f"  {'report':<20} {Path(output_dir) / REPORT_MARKDOWN} (+ {REPORT}, scores.png)")
