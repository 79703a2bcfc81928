"""`humpback grpo`: train M_k further online with TRL's GRPOTrainer, a calibrated fixed judge as the reward.

    humpback grpo --config recipes/quickstart/grpo.yaml --sft_adapter outputs/quickstart/m2 --sft_stage m2 \
        --prompts outputs/quickstart/curate-2/scored.jsonl
    accelerate launch --config_file accelerate_configs/cpu.yaml -m humpback_trl.scripts.grpo --config ...

Parse (our arguments + GRPOConfig + ModelConfig, unknown keys fail) -> load and calibrate the reward judge (a judge
under min_judge_accuracy stops here) -> load M_k's adapter as a trainable PeftModel -> train -> save -> push, as
`humpback dpo` does.
"""

from __future__ import annotations

from trl import GRPOConfig, GRPOTrainer, ModelConfig, TrlParser

from humpback_trl.grpo_training import GRPOArguments, train_grpo
from humpback_trl.logs import configure_logging


def make_parser(subparsers=None) -> TrlParser:
    dataclass_types = (GRPOArguments, GRPOConfig, ModelConfig)
    if subparsers is not None:
        return subparsers.add_parser("grpo", help="GRPO-train an SFT adapter", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types)


def run(argv: list[str] | None = None) -> GRPOTrainer:
    script_args, training_args, model_args = make_parser().parse_args_and_config(argv)
    configure_logging(training_args.get_process_log_level())
    return train_grpo(script_args, training_args, model_args)


if __name__ == "__main__":
    from humpback_trl.cli import run_command

    run_command("grpo")
