"""`humpback augment`: the backward model writes an instruction for every corpus segment.

    humpback augment --config recipes/quickstart/augment.yaml --corpus outputs/quickstart/corpus/dataset \
        --adapter outputs/quickstart/myx
    accelerate launch -m humpback_trl.scripts.augment --config ...
"""

from __future__ import annotations

import logging

from datasets import Dataset
from trl import TrlParser

from humpback_trl.augment import AugmentArguments, augment
from humpback_trl.logs import configure_logging
from humpback_trl.modeling import InferenceModelArguments
from humpback_trl.shards import process_state


def make_parser(subparsers=None) -> TrlParser:
    dataclass_types = (AugmentArguments, InferenceModelArguments)
    if subparsers is not None:
        return subparsers.add_parser(
            "augment", help="Write instructions for corpus segments", dataclass_types=dataclass_types
        )
    return TrlParser(dataclass_types)


def run(argv: list[str] | None = None) -> Dataset:
    args, model_args = make_parser().parse_args_and_config(argv)
    # INFO on the main process only, so N generating processes do not repeat every line; process_state forms the
    # group of a CPU launch too, where a plain PartialState() would make every process its own main process.
    configure_logging(logging.INFO if process_state().is_main_process else logging.WARNING)
    return augment(args, model_args)


if __name__ == "__main__":
    from humpback_trl.cli import run_command

    run_command("augment")
