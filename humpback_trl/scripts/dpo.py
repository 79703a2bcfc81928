"""`humpback dpo`: train M_k further with TRL's DPOTrainer on DPO pairs (prompt / chosen / rejected).

    humpback dpo --config recipes/quickstart/dpo.yaml --sft_adapter outputs/quickstart/m2 \
        --data outputs/quickstart/preferences/dpo.jsonl
    accelerate launch --config_file accelerate_configs/cpu.yaml -m humpback_trl.scripts.dpo --config ...

Parse (our arguments + DPOConfig + ModelConfig, unknown keys fail) -> load M_k's adapter as a trainable PeftModel
(QLoRA in the recipes; the reference is a frozen copy of it) -> train -> save -> push, as `humpback sft` does.
"""

from __future__ import annotations

from trl import DPOConfig, DPOTrainer, ModelConfig, TrlParser

from humpback_trl.logs import configure_logging
from humpback_trl.preference_training import PreferenceTrainingArguments, train_preferences


def make_parser(subparsers=None) -> TrlParser:
    dataclass_types = (PreferenceTrainingArguments, DPOConfig, ModelConfig)
    if subparsers is not None:
        return subparsers.add_parser("dpo", help="DPO-train an SFT adapter", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types)


def run(argv: list[str] | None = None) -> DPOTrainer:
    script_args, training_args, model_args = make_parser().parse_args_and_config(argv)
    configure_logging(training_args.get_process_log_level())
    return train_preferences("dpo", script_args, training_args, model_args)


if __name__ == "__main__":
    from humpback_trl.cli import run_command

    run_command("dpo")
