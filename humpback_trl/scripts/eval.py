"""`humpback eval`: every model answers one instruction set, a local judge compares each two in both orders.

    humpback eval --models outputs/quickstart/m0 outputs/quickstart/m1 outputs/quickstart/m2
    humpback eval --config recipes/quickstart/eval.yaml
    accelerate launch -m humpback_trl.scripts.eval --config recipes/quickstart/eval.yaml

Writes OUTPUT_DIR/report.json (its "table": win / tie / loss of each model against the reference), report.md,
winrate.png, judgments.jsonl and model_outputs/<name>.json (AlpacaEval's format).
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
