"""`humpback magpie`: generate, filter (and optionally self-curate) MAGPIE pairs.

humpback magpie --config recipes/quickstart/magpie.yaml
accelerate launch -m humpback_trl.scripts.magpie --config recipes/quickstart/magpie.yaml
"""

from __future__ import annotations

from datasets import Dataset
from trl import TrlParser

from humpback_trl.curation import CurationSettings
from humpback_trl.magpie import MagpieArguments, magpie
from humpback_trl.modeling import InferenceModelArguments


def make_parser(subparsers=None) -> TrlParser:
    dataclass_types = (MagpieArguments, InferenceModelArguments, CurationSettings)
    if subparsers is not None:
        return subparsers.add_parser("magpie", help="Synthesise pairs with MAGPIE", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types)


def run(argv: list[str] | None = None) -> Dataset:
    args, model_args, settings = make_parser().parse_args_and_config(argv)
    return magpie(args, model_args, settings)


if __name__ == "__main__":
    run()
