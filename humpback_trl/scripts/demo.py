"""`humpback demo --output-dir DIR`: the whole loop on CPU with nothing to download.

It runs recipes/quickstart/ (the built-in tiny random Llama, the bundled seed pairs and Python's own documentation
as the unlabeled corpus) and writes DIR/report.json, DIR/report.md and DIR/scores.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from humpback_trl import pipeline

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "quickstart"
NOISE_WARNING = (
    "Note: the demo model is a tiny RANDOM network, so its instructions, answers and scores are noise; the demo shows "
    "the loop, its artifacts and its report. For real data run recipes/llama-3.1-8b/ or recipes/qwen2.5-7b/ "
    "(humpback run recipes/llama-3.1-8b/) on a GPU."
)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="humpback demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="outputs/demo", help="Where every stage and the report go.")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--magpie", choices=pipeline.MAGPIE_USES, default="none")
    parser.add_argument("--from", dest="start_from", default=None, help="Force a restart from this stage.")
    args = parser.parse_args(argv)
    if not (QUICKSTART / "loop.yaml").is_file():
        raise SystemExit(
            f"The demo runs the recipes in {QUICKSTART}, which this installation lacks: run it from a clone."
        )
    print(NOISE_WARNING, flush=True)
    loop = pipeline.LoopArguments(
        output_dir=args.output_dir,
        iterations=args.iterations,
        accelerate_config=str(QUICKSTART.parents[1] / "accelerate_configs" / "cpu.yaml"),
        magpie=args.magpie,
    )
    report = pipeline.run_loop(QUICKSTART, loop, args.start_from)
    pipeline.print_summary(report, args.output_dir)
    print(NOISE_WARNING)
    return report


if __name__ == "__main__":
    run()
