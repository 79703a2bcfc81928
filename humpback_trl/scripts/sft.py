"""`humpback sft`: train the forward or backward model on pair data with TRL's SFTTrainer.

    accelerate launch --config_file accelerate_configs/cpu.yaml -m humpback_trl.scripts.sft \
        --config recipes/quickstart/backward.yaml
    humpback sft --config recipes/quickstart/seed.yaml

Parse (our arguments + SFTConfig + ModelConfig, unknown keys fail) -> load -> train -> save -> push, as TRL's own
scripts/sft.py, through the training tail DPO and KTO share (humpback_trl/training.py).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from trl import ModelConfig, SFTConfig, SFTTrainer, TrlParser

from humpback_trl.cli import argv_recipe, command_line_options
from humpback_trl.logs import configure_logging
from humpback_trl.training import HumpbackSFTArguments, train

CHECKPOINTING_KEYS = {"gradient_checkpointing", "activation_checkpointing"}


def make_parser(subparsers=None) -> TrlParser:
    dataclass_types = (HumpbackSFTArguments, SFTConfig, ModelConfig)
    if subparsers is not None:
        parser = subparsers.add_parser("sft", help="Train a forward or backward model", dataclass_types=dataclass_types)
    else:
        parser = TrlParser(dataclass_types)
    # TRL's SFTConfig defaults the deprecated `gradient_checkpointing` to True, which makes transformers warn on every
    # run; without a default, run() sets TRL's True through the current name, `activation_checkpointing`.
    parser.set_defaults(gradient_checkpointing=None)
    return parser


def user_keys(argv: Sequence[str]) -> set[str]:
    """The keys the recipe (`--config FILE`) and the command line set, whatever their values."""
    return (set(argv_recipe(argv)) | set(command_line_options(argv))) - {"config"}


def run(argv: list[str] | None = None) -> SFTTrainer:
    argv = sys.argv[1:] if argv is None else argv
    script_args, training_args, model_args = make_parser().parse_args_and_config(argv)
    configure_logging(training_args.get_process_log_level())
    keys = user_keys(argv)
    if not keys & CHECKPOINTING_KEYS:
        training_args.activation_checkpointing = training_args.gradient_checkpointing = True
    # train refuses ignored SFTConfig keys and a Hub token before it loads anything.
    return train(script_args, training_args, model_args, user_keys=keys)


if __name__ == "__main__":
    from humpback_trl.cli import run_command

    run_command("sft")
