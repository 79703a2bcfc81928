"""`humpback sft`: train the forward or backward model on pair data with TRL's SFTTrainer.

    accelerate launch --config_file accelerate_configs/cpu.yaml -m humpback_trl.scripts.sft \
        --config recipes/quickstart/backward.yaml
    humpback sft --config recipes/quickstart/seed.yaml

Parse (our arguments + SFTConfig + ModelConfig + curation settings, unknown keys fail) -> load -> train -> save ->
push, as TRL's own scripts/sft.py.
"""

from __future__ import annotations

from trl import ModelConfig, SFTConfig, SFTTrainer, TrlParser

from humpback_trl.curation import CurationSettings
from humpback_trl.training import HumpbackSFTArguments, train


def make_parser(subparsers=None) -> TrlParser:
    dataclass_types = (HumpbackSFTArguments, SFTConfig, ModelConfig, CurationSettings)
    if subparsers is not None:
        return subparsers.add_parser("sft", help="Train a forward or backward model", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types)


def run(argv: list[str] | None = None) -> SFTTrainer:
    script_args, training_args, model_args, curation = make_parser().parse_args_and_config(argv)
    return train(script_args, training_args, model_args, curation)


if __name__ == "__main__":
    run()
