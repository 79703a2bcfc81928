"""`humpback eval`: every model answers one instruction set; a judge that is none of them, its accuracy measured on
labelled pairs first, compares every two answers.

    humpback eval --models outputs/quickstart/m0 outputs/quickstart/m1 outputs/quickstart/m2
    humpback eval --config recipes/quickstart/eval.yaml --judge_method likelihood pairwise
    accelerate launch -m humpback_trl.scripts.eval --config recipes/quickstart/eval.yaml

The judge defaults to the base model of the compared adapters. Writes OUTPUT_DIR/report.json (per judge method its
calibration, table, pairs and ranking; "table": win / tie / loss and mean preference of each model against the
reference under the most accurate method), report.md, winrate.png, judgments.jsonl and model_outputs/<name>.json
(AlpacaEval's format).
"""

from __future__ import annotations

import logging
from typing import Any

from accelerate import PartialState
from trl import TrlParser

from humpback_trl.evaluation import EvalArguments, evaluate, render_markdown
from humpback_trl.logs import configure_logging


def run(argv: list[str] | None = None) -> dict[str, Any]:
    configure_logging(logging.INFO if PartialState().is_main_process else logging.WARNING)
    (args,) = make_parser().parse_args_and_config(argv)
    report = evaluate(args)
    if PartialState().is_main_process:
        print(render_markdown(report))
        print(f"-> {args.output_dir}/report.json, report.md, winrate.png, model_outputs/")
    return report


def make_parser() -> TrlParser:
    return TrlParser((EvalArguments,))


if __name__ == "__main__":
    from humpback_trl.cli import run_command

    run_command("eval")
