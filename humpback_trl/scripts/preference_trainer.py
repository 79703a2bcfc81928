"""`humpback dpo` and `humpback kto`: train M_k further with TRL's DPOTrainer on DPO pairs (prompt / chosen /
rejected) or with its KTOTrainer on KTO rows (prompt / completion / label). One script, two commands; scripts/dpo.py
and scripts/kto.py name the kind, so `accelerate launch -m humpback_trl.scripts.dpo|kto` runs it too.

    humpback dpo --config recipes/quickstart/dpo.yaml --sft_adapter outputs/quickstart/m2 \
        --data outputs/quickstart/preferences/dpo.jsonl
    accelerate launch --config_file accelerate_configs/cpu.yaml -m humpback_trl.scripts.kto --config ...

Parse (our arguments + DPOConfig or KTOConfig + ModelConfig, unknown keys fail) -> refuse a Hub token -> load M_k's
adapter as a trainable PeftModel (QLoRA in the recipes; the reference is a frozen copy of it) -> train -> save ->
push, through the training tail `humpback sft` uses (humpback_trl/training.py).
"""

from __future__ import annotations

from trl import DPOConfig, KTOConfig, ModelConfig, TrlParser

from humpback_trl.logs import configure_logging
from humpback_trl.preference_training import PreferenceTrainer, PreferenceTrainingArguments, train_preferences

CONFIGS = {"dpo": DPOConfig, "kto": KTOConfig}


def make_parser(kind: str) -> TrlParser:
    return TrlParser((PreferenceTrainingArguments, CONFIGS[kind], ModelConfig))


def run(kind: str, argv: list[str] | None = None) -> PreferenceTrainer:
    script_args, training_args, model_args = make_parser(kind).parse_args_and_config(argv)
    configure_logging(training_args.get_process_log_level())
    return train_preferences(kind, script_args, training_args, model_args)
