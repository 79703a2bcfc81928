"""Preference training of a Humpback model with TRL's DPOTrainer or KTOTrainer, starting from an SFT adapter (M_k).

Load the preference rows (`humpback preferences` output: TRL's conversational formats) -> load the base (4-bit in the
recipes) with M_k's adapter as a trainable PeftModel -> TRL adds a frozen copy of that adapter named "ref", so the
reference policy is M_k itself (TRL 1.16, `DPOTrainer.__init__`: "a PEFT model with a pretrained adapter") -> train,
resuming from the last checkpoint in output_dir -> save the adapter, M_k's prompt settings, the exact training set
and a card linking M_k and the preference data -> optionally push them to `<hub_prefix>-<stage>` and
`<hub_prefix>-<stage>-data`, like the SFT stages. Without `sft_adapter` a fresh LoRA (ModelConfig) is trained on the
base and the reference is the base. The entry points are `humpback_trl.scripts.dpo` and `humpback_trl.scripts.kto`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from datasets import Dataset, concatenate_datasets
from huggingface_hub import ModelCard, ModelCardData
from peft import PeftConfig, PeftModel
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, ModelConfig, get_peft_config, get_quantization_config
from trl.trainer.utils import create_model_from_path

from humpback_trl.builtin_models import resolve_model
from humpback_trl.chat_template import use_template
from humpback_trl.collators import PROMPT_SETTINGS_FILE, SwappedFieldCollator, save_prompt_settings
from humpback_trl.hub import PROJECT_TAGS, dataset_card, dataset_repo_id, model_repo_id, push_dataset
from humpback_trl.modeling import InferenceModelArguments, adapter_folder
from humpback_trl.pairs import is_local, load_table
from humpback_trl.preferences import KINDS, preferences_repo_id
from humpback_trl.training import ExactResumeMixin, resume_and_train

logger = logging.getLogger(__name__)

TRAINING_DATA_FILE = "training_data.jsonl"
REFERENCE_ADAPTER = "ref"  # the name TRL gives the frozen copy of a pretrained adapter
COLUMNS: dict[str, tuple[str, ...]] = {
    "dpo": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
}
# Kept beside the required columns when every file has them: the scores make the exact training set auditable, and
# TRL renders each row with its chat_template_kwargs.
EXTRA_COLUMNS = ("chosen_score", "rejected_score", "score", "source_id", "chat_template_kwargs")


class HumpbackDPOTrainer(ExactResumeMixin, DPOTrainer):
    """DPOTrainer whose resumed run trains exactly as the uninterrupted one would have."""


class HumpbackKTOTrainer(ExactResumeMixin, KTOTrainer):
    """KTOTrainer whose resumed run trains exactly as the uninterrupted one would have."""


TRAINERS = {"dpo": HumpbackDPOTrainer, "kto": HumpbackKTOTrainer}
PreferenceConfig = DPOConfig | KTOConfig
PreferenceTrainer = DPOTrainer | KTOTrainer


@dataclass
class PreferenceTrainingArguments:
    data: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Preference rows in TRL's format (`humpback preferences` output: dpo.jsonl / kto.jsonl or its "
            "dpo/ kto/ folder, or a Hub dataset id). Concatenated in order."
        },
    )
    data_split: str = field(default="train", metadata={"help": "Split to read from Hub datasets."})
    sft_adapter: str | None = field(
        default=None,
        metadata={
            "help": "The SFT adapter M_k to continue (local folder or Hub id); the reference model is a frozen copy "
            "of it. Unset: a fresh LoRA from the ModelConfig options, against the base model."
        },
    )
    sft_stage: str | None = field(
        default=None,
        metadata={
            "help": "M_k's stage name (e.g. m2): this stage is then <sft_stage>-<kind>, and the card links "
            "<hub_prefix>-<sft_stage>."
        },
    )
    stage: str | None = field(default=None, metadata={"help": "Artifact name; default <sft_stage>-<kind> or <kind>."})
    hub_prefix: str | None = field(
        default=None, metadata={"help": "Push to <hub_prefix>-<stage> (adapter) and <hub_prefix>-<stage>-data."}
    )

    def __post_init__(self) -> None:
        self.data = [self.data] if isinstance(self.data, str) else list(self.data)
        if not self.data:
            raise ValueError("No preference data: set `data` (the dpo.jsonl or kto.jsonl of `humpback preferences`)")


def stage_name(args: PreferenceTrainingArguments, kind: str) -> str:
    return args.stage or (f"{args.sft_stage}-{kind}" if args.sft_stage else kind)


def load_part(name: str, kind: str, split: str) -> Dataset:
    table = load_table(name, split=split)
    missing = [column for column in COLUMNS[kind] if column not in table.column_names]
    if missing:
        raise KeyError(
            f"{name}: no column(s) {missing} for {kind.upper()}; its columns are {table.column_names}. "
            f"Make {kind} data with `humpback preferences --kind {kind}`."
        )
    return table


def load_preference_data(names: list[str], kind: str, split: str = "train") -> tuple[Dataset, dict[str, int]]:
    """The rows of every file, restricted to TRL's columns plus the score and id columns they all share."""
    parts, counts = [], {}
    for name in names:
        if is_local(name) and Path(name).is_file() and Path(name).stat().st_size == 0:
            logger.warning("%s is empty: it adds no %s rows", name, kind.upper())
            counts[name] = 0
            continue
        parts.append(load_part(name, kind, split))
        counts[name] = len(parts[-1])
    if not parts or not sum(counts.values()):
        raise ValueError(
            f"No {kind.upper()} rows in {names}: `humpback preferences` kept none (see its report.json; lower "
            "`margin` or the thresholds, or sample more answers)"
        )
    shared = [c for c in EXTRA_COLUMNS if all(c in part.column_names for part in parts)]
    parts = [part.select_columns([*COLUMNS[kind], *shared]) for part in parts]
    dataset = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if kind == "kto":
        desirable = sum(dataset["label"])
        counts |= {"desirable": desirable, "undesirable": len(dataset) - desirable}
    counts["training rows"] = len(dataset)
    return dataset, counts


def base_model(args: PreferenceTrainingArguments, model_args: ModelConfig) -> str:
    if model_args.model_name_or_path:
        return resolve_model(model_args.model_name_or_path)
    if args.sft_adapter:
        return PeftConfig.from_pretrained(args.sft_adapter).base_model_name_or_path
    raise ValueError("Set model_name_or_path, or sft_adapter (its config names the base model)")


def load_policy(args: PreferenceTrainingArguments, model_args: ModelConfig, base: str) -> PeftModel:
    """The base (quantized as ModelConfig says) with M_k's adapter, trainable. TRL copies it as the reference."""
    if model_args.use_peft:
        logger.info("Continuing the LoRA of %s; the lora_* options apply only without sft_adapter", args.sft_adapter)
    model = create_model_from_path(
        base,
        revision=model_args.model_revision,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
        quantization_config=get_quantization_config(model_args),
        # One whole copy per process: under DDP every process holds the (4-bit) model on its own GPU.
        device_map={"": PartialState().local_process_index} if torch.cuda.is_available() else None,
    )
    return PeftModel.from_pretrained(model, args.sft_adapter, is_trainable=True)


def load_tokenizer(args: PreferenceTrainingArguments, model_args: ModelConfig, base: str) -> PreTrainedTokenizerBase:
    """M_k's tokenizer when its folder saved one (the one SFT used), else the base model's; with the template every
    stage renders with as its own (the plain fallback for a base model without one), since TRL renders the rows."""
    if args.sft_adapter:
        try:
            return use_template(AutoTokenizer.from_pretrained(args.sft_adapter))
        except (OSError, ValueError):
            pass
    return use_template(AutoTokenizer.from_pretrained(base, revision=model_args.model_revision))


def build_trainer(
    kind: str, args: PreferenceTrainingArguments, training_args: PreferenceConfig, model_args: ModelConfig
) -> tuple[PreferenceTrainer, dict[str, int]]:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    dataset, counts = load_preference_data(args.data, kind, args.data_split)
    if kind == "kto":
        # KTOTrainer samples sequentially and estimates its KL term from each batch's neighbours, so the rows are
        # shuffled once here (seeded): a file sorted by label would give batches of one label.
        dataset = dataset.shuffle(seed=training_args.seed).flatten_indices()
    if args.hub_prefix and not training_args.hub_model_id:
        training_args.hub_model_id = model_repo_id(args.hub_prefix, stage_name(args, kind))
    if (args.sft_adapter or model_args.use_peft) and training_args.ddp_find_unused_parameters is None:
        # Under DDP the frozen base weights never get gradients; DDP would search for them on every step and warn.
        training_args.ddp_find_unused_parameters = False
    base = base_model(args, model_args)
    tokenizer = load_tokenizer(args, model_args, base)
    fresh = args.sft_adapter is None
    if fresh:
        training_args.model_init_kwargs = {
            "revision": model_args.model_revision,
            "attn_implementation": model_args.attn_implementation,
            "dtype": model_args.dtype,
            **(training_args.model_init_kwargs or {}),
        }
    trainer = TRAINERS[kind](
        model=base if fresh else load_policy(args, model_args, base),
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        quantization_config=get_quantization_config(model_args) if fresh else None,
        peft_config=get_peft_config(model_args) if fresh else None,
    )
    # TRL drops rows whose prompt alone fills max_length (no completion token would remain): counted, not silent.
    counts["dropped (prompt fills max_length)"] = len(dataset) - len(trainer.train_dataset)
    return trainer, counts


def copy_prompt_settings(args: PreferenceTrainingArguments, trainer: PreferenceTrainer, output_dir: Path) -> None:
    """M_k's prompt layout (system prompt, tags, template arguments) beside the new adapter, so `humpback chat` and
    `load_humpback` prompt it exactly as the preference data did."""
    folder = adapter_folder(InferenceModelArguments(adapter=args.sft_adapter)) if args.sft_adapter else None
    if folder is not None and (folder / PROMPT_SETTINGS_FILE).is_file():
        shutil.copyfile(folder / PROMPT_SETTINGS_FILE, output_dir / PROMPT_SETTINGS_FILE)
    else:
        save_prompt_settings(SwappedFieldCollator(trainer.processing_class, direction="forward"), output_dir)


def data_link(name: str, kind: str, hub_prefix: str | None) -> str:
    """A Hub id as it is; a local file by the repo `humpback preferences` pushes it to under the same prefix."""
    return preferences_repo_id(hub_prefix, kind) if hub_prefix and is_local(name) else name


def start_link(args: PreferenceTrainingArguments) -> str:
    """M_k as a Hub id: given as one, or <hub_prefix>-<sft_stage> (where the loop pushed it); else its folder."""
    if args.sft_adapter is None:
        return "none (a fresh LoRA on the base model)"
    if args.hub_prefix and args.sft_stage and is_local(args.sft_adapter):
        return model_repo_id(args.hub_prefix, args.sft_stage)
    return args.sft_adapter


def bullets(items: Mapping[str, object]) -> str:
    return "\n".join(f"- **{key}**: {value}" for key, value in items.items())


def quantization(model_args: ModelConfig) -> str:
    return "4-bit nf4 (QLoRA)" if model_args.load_in_4bit else ("8-bit" if model_args.load_in_8bit else "none")


def lora(model_args: ModelConfig, sft_adapter: str | None) -> str:
    if sft_adapter:
        return "M_k's adapter, continued"
    if not model_args.use_peft:
        return "full fine-tuning"
    return f"r={model_args.lora_r} alpha={model_args.lora_alpha} targets={model_args.lora_target_modules}"


def settings(kind: str, args: PreferenceConfig, model_args: ModelConfig, sft_adapter: str | None) -> dict[str, object]:
    loss = args.loss_type if isinstance(args.loss_type, str) else " + ".join(args.loss_type)
    return {
        "trainer": f"trl {TRAINERS[kind].__name__}, loss {loss}, beta {args.beta}",
        "reference model": "a frozen copy of M_k's adapter" if sft_adapter else "the base model (adapter disabled)",
        "learning_rate": args.learning_rate,
        "lr_scheduler": args.lr_scheduler_type,
        "effective_batch": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "max_steps": args.max_steps,
        "max_length": args.max_length,
        "quantization": quantization(model_args),
        "lora": lora(model_args, sft_adapter),
    }


def preference_card(
    kind: str,
    stage: str,
    base: str,
    links: Mapping[str, str],
    counts: Mapping[str, int],
    run_settings: Mapping[str, Any],
) -> ModelCard:
    hub_datasets = [name for name in (links["preference data"], links["exact training set"]) if "/" in name]
    card_data = ModelCardData(
        base_model=base,
        library_name="peft",
        tags=[*PROJECT_TAGS, kind, f"humpback-{stage}"],
        datasets=[name for name in hub_datasets if not is_local(name)] or None,
    )
    return ModelCard(
        f"""---
{card_data.to_yaml()}
---

# humpback-trl {stage}

The forward model M_k further trained with TRL's {TRAINERS[kind].__name__} on preference data made from the
instruction-backtranslation rubric (humpback-trl: Li et al., ICLR 2024; self-rewarding pairs after Yuan et al. 2024).

{bullets({"Base model": f"`{base}`", **{key: f"`{value}`" for key, value in links.items()}})}

## Data counts

{bullets(counts)}

## Settings

{bullets(run_settings)}
"""
    )


def save_outputs(
    kind: str,
    trainer: PreferenceTrainer,
    args: PreferenceTrainingArguments,
    model_args: ModelConfig,
    counts: dict[str, int],
) -> None:
    output_dir = Path(trainer.args.output_dir)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if isinstance(model, PeftModel) and REFERENCE_ADAPTER in model.peft_config:
        # The reference is M_k's adapter unchanged, published already: the artifact is the trained adapter alone.
        model.delete_adapter(REFERENCE_ADAPTER)
    trainer.save_model(str(output_dir))
    if not trainer.accelerator.is_main_process:
        return
    copy_prompt_settings(args, trainer, output_dir)
    # The rows TRL trained on, without the token ids it added.
    trained = trainer.train_dataset
    dataset = trained.select_columns([column for column in trained.column_names if not column.endswith("_ids")])
    dataset.to_json(str(output_dir / TRAINING_DATA_FILE), lines=True, force_ascii=False)
    stage = stage_name(args, kind)
    prefix = args.hub_prefix
    data_repo = dataset_repo_id(prefix, stage) if prefix else None
    links = {
        "starting model (M_k)": start_link(args),
        "preference data": ", ".join(data_link(name, kind, prefix) for name in args.data),
        "exact training set": data_repo or TRAINING_DATA_FILE,
    }
    base = model_args.model_name_or_path or base_model(args, model_args)
    card = preference_card(kind, stage, base, links, counts, settings(kind, trainer.args, model_args, args.sft_adapter))
    card.save(str(output_dir / "README.md"))
    if trainer.args.push_to_hub:
        # save_model above already pushed the adapter; our card replaces the generic one it wrote.
        card.push_to_hub(trainer.hub_model_id)
        if data_repo:
            summary = f"The exact training set of `{trainer.hub_model_id}` ({kind.upper()}, TRL conversational format)."
            data_links = {"trained model": trainer.hub_model_id, "preference data": links["preference data"]}
            private = trainer.args.hub_private_repo
            data_card = dataset_card(title=data_repo, summary=summary, counts=counts, links=data_links, private=private)
            push_dataset(dataset, data_card, data_repo, private=private)


def train_preferences(
    kind: str, args: PreferenceTrainingArguments, training_args: PreferenceConfig, model_args: ModelConfig
) -> PreferenceTrainer:
    trainer, counts = build_trainer(kind, args, training_args, model_args)
    resume_and_train(trainer)
    save_outputs(kind, trainer, args, model_args, counts)
    trainer.accelerator.print(f"Saved {stage_name(args, kind)} to {training_args.output_dir}")
    # The main process writes the card and data alone; every process waits for it before the group is torn down.
    trainer.accelerator.wait_for_everyone()
    trainer.end()
    return trainer
