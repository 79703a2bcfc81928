"""The whole loop (`humpback run`) on the tiny model as the loop tests run it: the quickstart recipes shortened to
seconds per stage, and the loop started as its own process. One run of every stage (tests/conftest.py, `first_run`)
is shared by the tests that read its outputs; a test that adds stages (GRPO, the ablation, the rewrite) runs the loop
again on a copy of that run's folder, where every stage it shares is up to date, so only its own stages run."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from humpback_trl.pairs import builtin_path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart"
FAST = {  # the quickstart recipes, shortened so the loop runs in about a minute (on the tiny model, see below)
    "backward.yaml": {"max_steps": 3, "save_steps": 2},
    "seed.yaml": {"max_steps": 3, "save_steps": 2},
    # The tiny model's random instructions fail the instruction checks: off, so every candidate is scored.
    "curate.yaml": {"curation_shard_size": 8, "calibration_dev_set": "none", "instruction_checks": "none"},
    "augment.yaml": {"max_new_tokens": 8, "shard_size": 8, "max_segments": 12},
    "corpus.yaml": {},
    "magpie.yaml": {
        "num_samples": 8,
        "num_turns": 1,
        "instruction_max_new_tokens": 8,
        "response_max_new_tokens": 8,
        "curate": False,
    },
    "preferences.yaml": {"max_instructions": 3, "num_samples": 2, "max_new_tokens": 8, "shard_size": 4},
    "dpo.yaml": {"max_steps": 2, "save_steps": 2, "per_device_train_batch_size": 2},
    "grpo.yaml": {
        "max_steps": 2,
        "max_prompts": 2,
        "per_device_train_batch_size": 2,
        "num_generations": 2,
        "max_completion_length": 8,
    },
    # The tiny random model's PMI and wording are noise: floors it passes, so its rewrites are accepted.
    "rewrite.yaml": {"max_new_tokens": 8, "min_pmi": -1000, "min_lexical": 0.0, "max_new_numbers": 1000},
    "eval.yaml": {"max_instructions": 2, "max_new_tokens": 8, "shard_size": 2},
}
# The loop of the shared run: two iterations, MAGPIE pairs curated with the candidates, DPO after M2, the eval.
STAGES = [
    "corpus",
    "myx",
    "augment",
    "magpie",
    "m0",
    "curate-1",
    "m1",
    "curate-2",
    "m2",
    "preferences",
    "m2-dpo",
    "eval",
]


# The eval judges the bundled pairwise dev set before its table, in every loop test whose eval reruns: its first 10
# pairs (two of each kind) stand in for the 100, a few seconds less each time.
PAIRWISE_DEV_PAIRS = 10


def write_recipes(folder: Path, data: Path) -> Path:
    """The loop's recipes in `folder` (only recipes: tests parse every file there as one) and their data in `data`."""
    pairwise_dev = data / "pairwise_dev.jsonl"
    lines = builtin_path("pairwise_dev").read_text(encoding="utf-8").splitlines(keepends=True)
    pairwise_dev.write_text("".join(lines[:PAIRWISE_DEV_PAIRS]), encoding="utf-8")
    recipes = {**FAST, "eval.yaml": {**FAST["eval.yaml"], "pairwise_dev": str(pairwise_dev)}}
    for name, changes in recipes.items():
        config = {**yaml.safe_load((QUICKSTART / name).read_text()), **changes}
        (folder / name).write_text(yaml.safe_dump(config))
    loop = {
        **yaml.safe_load((QUICKSTART / "loop.yaml").read_text()),
        "accelerate_config": str(ROOT / "accelerate_configs/cpu.yaml"),
        "magpie": "candidates",
        "preference": "dpo",
        # The quickstart recipes name the real model; the loop's override runs every stage on the tiny one.
        "model": "builtin:tiny-llama",
    }
    (folder / "loop.yaml").write_text(yaml.safe_dump(loop))
    return folder


def humpback_run(recipes: Path, output_dir: Path, *extra: str, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "humpback_trl.cli", "run", str(recipes), "--output_dir", str(output_dir), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def finish(process: subprocess.Popen, timeout: int = 600) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-4000:]
    return output


def statuses(output: str) -> dict[str, str]:
    """{stage: "running" | "up to date" | ...} from the loop's `[humpback] stage: status` lines."""
    return {
        line.split(":")[0].split()[-1]: line.split(": ")[1].split(",")[0]
        for line in output.splitlines()
        if line.startswith("[humpback] ") and ": " in line
    }


def copy_of_run(out: Path, target: Path) -> Path:
    """The shared run's folder copied, markers included: the stage hashes name no output folder, so its stages are
    up to date in the copy too."""
    shutil.copytree(out, target)
    return target
