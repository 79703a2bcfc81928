"""`humpback run`: the whole Humpback loop from one recipe folder.

humpback run recipes/quickstart/ [--from STAGE] [--key value ...]
humpback run recipes/quickstart/ --model builtin:tiny-llama      (every stage's model, without copying the recipes)
humpback run recipes/llama-3.1-8b/ --model meta-llama/Llama-3.2-3B --magpie_model meta-llama/Llama-3.2-3B-Instruct
humpback run recipes/llama-3.1-8b/loop_multi_gpu.yaml
humpback run recipes/llama-3.1-8b/ --dry_run      (check every recipe and input, print the commands, run nothing)
humpback run recipes/llama-3.1-8b/loop_multi_gpu.yaml --num_processes 16 --num_machines 2 --machine_rank R \
    --main_process_ip IP      (on every machine, R its rank: one loop across machines; recipes/launch.slurm on Slurm)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from trl import TrlParser

from humpback_trl.dry_run import dry_run
from humpback_trl.errors import UserError
from humpback_trl.pipeline import LoopArguments, print_summary, run_loop


def make_parser() -> TrlParser:
    return TrlParser((LoopArguments,))


def run(argv: list[str] | None = None) -> dict[str, Any] | list[list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        raise UserError(
            "name a recipe folder or its loop.yaml first: humpback run RECIPE_FOLDER|LOOP.yaml [--from STAGE] "
            "[--output_dir DIR] [--iterations K] [--model NAME] [--backward_model NAME] [--magpie_model NAME] "
            "[--dry_run] ..."
        )
    target = Path(argv.pop(0))
    # A folder runs its loop.yaml; a yaml file in a recipe folder runs that variant (e.g. loop_multi_gpu.yaml).
    folder, loop_file = (target.parent, target) if target.suffix == ".yaml" else (target, target / "loop.yaml")
    start_from = None
    if "--from" in argv:
        index = argv.index("--from")
        start_from = argv[index + 1]
        del argv[index : index + 2]
    (loop,) = make_parser().parse_args_and_config(["--config", str(loop_file), *argv])
    if loop.dry_run:
        return dry_run(folder, loop)
    report = run_loop(folder, loop, start_from)
    print_summary(report, loop.output_dir)
    return report


if __name__ == "__main__":
    from humpback_trl.cli import run_command

    run_command("run")
