"""`humpback kto`: train M_k further with TRL's KTOTrainer on KTO rows (prompt / completion / label).

    humpback kto --config recipes/quickstart/kto.yaml --sft_adapter outputs/quickstart/m2 \
        --data outputs/quickstart/preferences/kto.jsonl
    accelerate launch --config_file accelerate_configs/cpu.yaml -m humpback_trl.scripts.kto --config ...

Parse (our arguments + KTOConfig + ModelConfig, unknown keys fail) -> load M_k's adapter as a trainable PeftModel
(QLoRA in the recipes; the reference is a frozen copy of it) -> train -> save -> push, as `humpback sft` does.
"""

from __future__ import annotations

from trl import KTOConfig, KTOTrainer, ModelConfig, TrlParser

from humpback_trl.logs import configure_logging
from humpback_trl.preference_training import PreferenceTrainingArguments, train_preferences


def make_parser(subparsers=None) -> TrlParser:
    dataclass_types = (PreferenceTrainingArguments, KTOConfig, ModelConfig)
    if subparsers is not None:
        return subparsers.add_parser("kto", help="KTO-train an SFT adapter", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types)


def run(argv: list[str] | None = None) -> KTOTrainer:
    script_args, training_args, model_args = make_parser().parse_args_and_config(argv)
    configure_logging(training_args.get_process_log_level())
    return train_preferences("kto", script_args, training_args, model_args)


if __name__ == "__main__":
    from humpback_trl.cli import run_command

    run_command("kto")
