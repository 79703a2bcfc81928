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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset, concatenate_datasets
from huggingface_hub import ModelCard
from peft import PeftModel
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, ModelConfig, get_peft_config, get_quantization_config
from trl.trainer.utils import create_model_from_path

from humpback_trl.builtin_models import portable_name, resolve_model
from humpback_trl.chat_template import use_template
from humpback_trl.collators import PROMPT_SETTINGS_FILE, SwappedFieldCollator, save_prompt_settings
from humpback_trl.configs import PREFERENCE_KINDS as KINDS
from humpback_trl.configs import PreferenceTrainingArguments
from humpback_trl.errors import MissingColumnError, UserError

# `bullets` and `quantization` are re-exported for grpo_training.py, which imports them from here.
from humpback_trl.hub import bullets as bullets
from humpback_trl.hub import model_repo_id, public_name, training_card
from humpback_trl.logs import peft_wrapping
from humpback_trl.modeling import InferenceModelArguments, adapter_base_name, adapter_folder
from humpback_trl.pairs import is_local, load_table
from humpback_trl.preferences import preferences_repo_id
from humpback_trl.stage_outputs import TRAINING
from humpback_trl.training import (
    Artifact,
    ExactResumeMixin,
    PortableSaveMixin,
    check_before_loading,
    check_before_weights,
    lora_settings,
    make_base_portable,
    prepare_training_args,
    run_settings,
    train_and_publish,
)
from humpback_trl.training import quantization as quantization

logger = logging.getLogger(__name__)

REFERENCE_ADAPTER = "ref"  # the name TRL gives the frozen copy of a pretrained adapter
COLUMNS: dict[str, tuple[str, ...]] = {
    "dpo": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
}
# Kept beside the required columns when every file has them: the scores make the exact training set auditable, and
# TRL renders each row with its chat_template_kwargs.
EXTRA_COLUMNS = ("chosen_score", "rejected_score", "score", "source_id", "chat_template_kwargs")


class HumpbackDPOTrainer(ExactResumeMixin, PortableSaveMixin, DPOTrainer):
    """DPOTrainer whose resumed run trains exactly as the uninterrupted one would have, and whose saves load
    anywhere."""


class HumpbackKTOTrainer(ExactResumeMixin, PortableSaveMixin, KTOTrainer):
    """KTOTrainer whose resumed run trains exactly as the uninterrupted one would have, and whose saves load
    anywhere."""


TRAINERS = {"dpo": HumpbackDPOTrainer, "kto": HumpbackKTOTrainer}
PreferenceConfig = DPOConfig | KTOConfig
PreferenceTrainer = DPOTrainer | KTOTrainer


def stage_name(args: PreferenceTrainingArguments, kind: str) -> str:
    return args.stage or (f"{args.sft_stage}-{kind}" if args.sft_stage else kind)


def load_part(name: str, kind: str, split: str) -> Dataset:
    table = load_table(name, split=split)
    missing = [column for column in COLUMNS[kind] if column not in table.column_names]
    if missing:
        raise MissingColumnError(
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
        raise UserError(
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


def base_name(args: PreferenceTrainingArguments, model_args: ModelConfig) -> str:
    """The base as the user named it: model_name_or_path, else the base M_k's adapter was trained on."""
    if model_args.model_name_or_path:
        return model_args.model_name_or_path
    if args.sft_adapter:
        return adapter_base_name(args.sft_adapter)
    raise UserError("Set model_name_or_path, or sft_adapter (its config names the base model)")


def base_model(args: PreferenceTrainingArguments, model_args: ModelConfig) -> str:
    """The folder or Hub id the base loads from."""
    return resolve_model(base_name(args, model_args))


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
    with peft_wrapping():
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
    check_before_loading(training_args)
    dataset, counts = load_preference_data(args.data, kind, args.data_split)
    if kind == "kto":
        # KTOTrainer samples sequentially and estimates its KL term from each batch's neighbours, so the rows are
        # shuffled once here (seeded): a file sorted by label would give batches of one label.
        dataset = dataset.shuffle(seed=training_args.seed).flatten_indices()
    fresh = args.sft_adapter is None
    prepare_training_args(
        training_args,
        model_args,
        stage=stage_name(args, kind),
        hub_prefix=args.hub_prefix,
        adapter=not fresh or model_args.use_peft,
        loads_model=fresh,
    )
    base = base_model(args, model_args)
    check_before_weights(training_args, model_args, base if fresh else None)
    tokenizer = load_tokenizer(args, model_args, base)
    with peft_wrapping():
        trainer = TRAINERS[kind](
            model=base if fresh else load_policy(args, model_args, base),
            args=training_args,
            train_dataset=dataset,
            processing_class=tokenizer,
            quantization_config=get_quantization_config(model_args) if fresh else None,
            peft_config=get_peft_config(model_args) if fresh else None,
        )
    make_base_portable(trainer, base_name(args, model_args))
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
    return preferences_repo_id(hub_prefix, kind) if hub_prefix and is_local(name) else public_name(name)


def start_link(args: PreferenceTrainingArguments) -> str:
    """M_k as a Hub id: given as one, or <hub_prefix>-<sft_stage> (where the loop pushed it); else its folder."""
    if args.sft_adapter is None:
        return "none (a fresh LoRA on the base model)"
    if args.hub_prefix and args.sft_stage and is_local(args.sft_adapter):
        return model_repo_id(args.hub_prefix, args.sft_stage)
    return public_name(args.sft_adapter)


def lora(model_args: ModelConfig, sft_adapter: str | None) -> str:
    return "M_k's adapter, continued" if sft_adapter else lora_settings(model_args)


def settings(kind: str, args: PreferenceConfig, model_args: ModelConfig, sft_adapter: str | None) -> dict[str, object]:
    loss = args.loss_type if isinstance(args.loss_type, str) else " + ".join(args.loss_type)
    return {
        "trainer": f"trl {TRAINERS[kind].__name__}, loss {loss}, beta {args.beta}",
        "reference model": "a frozen copy of M_k's adapter" if sft_adapter else "the base model (adapter disabled)",
        **run_settings(args, model_args, lora(model_args, sft_adapter)),
    }


def preference_card(
    kind: str,
    stage: str,
    base: str,
    links: Mapping[str, str],
    hub_datasets: Sequence[str],
    counts: Mapping[str, int],
    run_settings: Mapping[str, object],
) -> ModelCard:
    return training_card(
        base_model=base,
        stage=stage,
        tags=[kind],
        summary=f"The forward model M_k further trained with TRL's {TRAINERS[kind].__name__} on preference data "
        "made from the\ninstruction-backtranslation rubric (humpback-trl: Li et al., ICLR 2024; self-rewarding pairs "
        "after Yuan et al. 2024).",
        facts={key: f"`{value}`" for key, value in links.items()},
        datasets=hub_datasets,
        counts=counts,
        settings=run_settings,
    )


def describe_preferences(
    kind: str, args: PreferenceTrainingArguments, model_args: ModelConfig, counts: dict[str, int]
) -> Callable[[PreferenceTrainer], Artifact]:
    """What a DPO or KTO stage publishes: the trained adapter alone, M_k's prompt settings, the rows TRL trained on
    (without the token ids it added) and the card linking M_k and the preference data."""

    def describe(trainer: PreferenceTrainer) -> Artifact:
        model = trainer.accelerator.unwrap_model(trainer.model)
        if isinstance(model, PeftModel) and REFERENCE_ADAPTER in model.peft_config:
            # The reference is M_k's adapter unchanged, published already: the artifact is the trained adapter alone.
            model.delete_adapter(REFERENCE_ADAPTER)
        trained = trainer.train_dataset
        dataset = trained.select_columns([column for column in trained.column_names if not column.endswith("_ids")])
        stage = stage_name(args, kind)
        preference_data = ", ".join(data_link(name, kind, args.hub_prefix) for name in args.data)
        base = base_name(args, model_args)
        run = settings(kind, trainer.args, model_args, args.sft_adapter)

        def card(data_repo: str | None) -> ModelCard:
            links = {
                "starting model (M_k)": start_link(args),
                "preference data": preference_data,
                "exact training set": data_repo or TRAINING.training_data,
            }
            pushed = [
                data_link(name, kind, args.hub_prefix) for name in args.data if args.hub_prefix or not is_local(name)
            ]
            hub_datasets = [*pushed, *([data_repo] if data_repo else [])]
            return preference_card(kind, stage, portable_name(base), links, hub_datasets, counts, run)

        return Artifact(
            stage=stage,
            hub_prefix=args.hub_prefix,
            base=base,
            training_set=dataset,
            counts=counts,
            card=card,
            data_summary=f"The exact training set of `{{model}}` ({kind.upper()}, TRL conversational format).",
            data_links={"preference data": preference_data},
            write_beside=lambda folder: copy_prompt_settings(args, trainer, folder),
        )

    return describe


def train_preferences(
    kind: str, args: PreferenceTrainingArguments, training_args: PreferenceConfig, model_args: ModelConfig
) -> PreferenceTrainer:
    trainer, counts = build_trainer(kind, args, training_args, model_args)
    return train_and_publish(trainer, describe_preferences(kind, args, model_args, counts))
