"""`humpback magpie`: generate, filter (and optionally self-curate) MAGPIE pairs.

humpback magpie --config recipes/quickstart/magpie.yaml
accelerate launch -m humpback_trl.scripts.magpie --config recipes/quickstart/magpie.yaml
"""

from __future__ import annotations

import logging

from datasets import Dataset
from trl import TrlParser

from humpback_trl.curation import CurationSettings
from humpback_trl.logs import configure_logging
from humpback_trl.magpie import MagpieArguments, magpie
from humpback_trl.modeling import InferenceModelArguments
from humpback_trl.shards import process_state


def make_parser(subparsers=None) -> TrlParser:
    dataclass_types = (MagpieArguments, InferenceModelArguments, CurationSettings)
    if subparsers is not None:
        return subparsers.add_parser("magpie", help="Synthesise pairs with MAGPIE", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types)


def run(argv: list[str] | None = None) -> Dataset:
    args, model_args, settings = make_parser().parse_args_and_config(argv)
    # INFO on the main process only, so N generating processes do not repeat every line; process_state forms the
    # group of a CPU launch too, where a plain PartialState() would make every process its own main process.
    configure_logging(logging.INFO if process_state().is_main_process else logging.WARNING)
    return magpie(args, model_args, settings)


if __name__ == "__main__":
    from humpback_trl.cli import run_command

    run_command("magpie")
