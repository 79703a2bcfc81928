"""`humpback rewrite`: an aligned model rewrites curated outputs as assistant answers grounded in their source, each
rewrite checked against its source (likelihood and lexical floors) and scored by the curation method.

    humpback rewrite --config recipes/quickstart/rewrite.yaml --pairs outputs/quickstart/curate-1 \
        --adapter outputs/quickstart/m0 --rewrite_model builtin:smollm2-135m-instruct
    accelerate launch -m humpback_trl.scripts.rewrite --config ...
"""

from __future__ import annotations

import logging
from pathlib import Path

from accelerate import PartialState
from datasets import Dataset
from trl import TrlParser

from humpback_trl.curation import CurationSettings
from humpback_trl.logs import configure_logging
from humpback_trl.modeling import InferenceModelArguments
from humpback_trl.rewrite import RewriteArguments, rewrite
from humpback_trl.stage_outputs import REWRITE


def make_parser(subparsers=None) -> TrlParser:
    dataclass_types = (RewriteArguments, InferenceModelArguments, CurationSettings)
    if subparsers is not None:
        return subparsers.add_parser(
            "rewrite", help="Rewrite curated outputs as grounded answers", dataclass_types=dataclass_types
        )
    return TrlParser(dataclass_types)


def run(argv: list[str] | None = None) -> Dataset:
    args, model_args, settings = make_parser().parse_args_and_config(argv)
    # INFO on the main process only, so N generating processes do not repeat every line.
    configure_logging(logging.INFO if PartialState().is_main_process else logging.WARNING)
    rewrites = rewrite(args, model_args, settings)
    if PartialState().is_main_process:
        decisions = rewrites["decision"]
        print(
            f"Rewrote {len(rewrites)} pairs: {decisions.count('rewritten')} rewrites kept, "
            f"{len(rewrites) - decisions.count('rewritten')} rejected -> {Path(args.output_dir) / REWRITE.rewrites}"
        )
    return rewrites


if __name__ == "__main__":
    from humpback_trl.cli import run_command

    run_command("rewrite")
