"""Training the forward or backward model on pair data with TRL's SFTTrainer and the swapped-field collator.

Load pairs (files, Hub ids, builtin:seed, an oasst1 export) -> build the trainer (QLoRA by default in the recipes) ->
train, resuming from the last checkpoint in output_dir -> save the adapter, tokenizer, card and the exact training
set -> optionally push the adapter and the training set to `<hub_prefix>-<stage>` and `<hub_prefix>-<stage>-data`.
The entry point is `humpback_trl.scripts.sft`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field, fields
from pathlib import Path

from datasets import Dataset, concatenate_datasets
from transformers import AutoTokenizer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig, SFTConfig, SFTTrainer, get_peft_config, get_quantization_config

from humpback_trl.builtin_models import resolve_model
from humpback_trl.callbacks import SelfCurationCallback
from humpback_trl.chat_template import stop_token_ids, turn_end, use_template
from humpback_trl.collators import DEFAULT_BACKWARD_PROMPT, SwappedFieldCollator, save_prompt_settings
from humpback_trl.curation import CurationSettings
from humpback_trl.hub import (
    curated_repo_id,
    dataset_card,
    dataset_repo_id,
    model_card,
    model_repo_id,
    push_dataset,
    stage_name,
)
from humpback_trl.oasst import load_oasst_seed
from humpback_trl.pairs import PairColumns, load_pairs
from humpback_trl.schedule import apply_paper_schedule
from humpback_trl.tagging import Tagging

logger = logging.getLogger(__name__)

TRAINING_DATA_FILE = "training_data.jsonl"


@dataclass
class HumpbackSFTArguments:
    data: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Pair data: local jsonl/json/parquet/csv files, save_to_disk folders, Hub dataset ids, or "
            "builtin:seed. Concatenated in order."
        },
    )
    data_split: str = field(default="train", metadata={"help": "Split to read from Hub datasets."})
    default_source: str = field(default="seed", metadata={"help": "Source of rows whose data has no source column."})
    instruction_column: str = "instruction"
    output_column: str = "output"
    source_column: str = "source"
    id_column: str = "source_id"
    oasst_seed: str | None = field(
        default=None,
        metadata={
            "help": "oasst1 message export (local file or Hub id, e.g. OpenAssistant/oasst1): its first-turn "
            "rank-0 English pairs are added as seed."
        },
    )
    oasst_lang: str = "en"
    seed_limit: int = field(default=3200, metadata={"help": "Cap on oasst seed pairs (paper: 3,200)."})
    direction: str = field(
        default="forward", metadata={"help": "forward: p(output|instruction); backward: p(instruction|output)."}
    )
    tagging: bool = field(default=True, metadata={"help": "Append the paper's source tags to forward instructions."})
    system_prompt: str | None = None
    backward_prompt: str = DEFAULT_BACKWARD_PROMPT
    chat_template_name: str | None = field(
        default=None,
        metadata={"help": "For tokenizers holding several named templates (Command R+): the one to use (default)."},
    )
    paper_schedule: bool = field(
        default=False,
        metadata={
            "help": "Use the paper's lr 1e-5 -> 9e-6 linear, weight decay 0.1, batch 32 (8 under 3,000), steps by size."
        },
    )
    iteration: int = field(default=0, metadata={"help": "Forward iteration k: the model is M_k (M0 = seed model)."})
    stage: str | None = field(default=None, metadata={"help": "Artifact name; default myx (backward) or m<iteration>."})
    hub_prefix: str | None = field(
        default=None, metadata={"help": "Push to <hub_prefix>-<stage> (adapter) and <hub_prefix>-<stage>-data."}
    )
    curate_candidates: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Candidate pool (file, folder or Hub id) that the trained forward model scores when training "
            "ends, for the next iteration (SelfCurationCallback)."
        },
    )
    curation_output_dir: str | None = field(default=None, metadata={"help": "Default: <output_dir>/curation."})

    def __post_init__(self) -> None:
        # A single path written as a YAML string instead of a list would otherwise be read character by character.
        self.data = [self.data] if isinstance(self.data, str) else list(self.data)
        self.curate_candidates = (
            [self.curate_candidates] if isinstance(self.curate_candidates, str) else list(self.curate_candidates)
        )
        if self.direction not in ("forward", "backward"):
            raise ValueError(f"direction must be 'forward' or 'backward', got {self.direction!r}")
        if not self.data and not self.oasst_seed:
            raise ValueError("No training data: set `data` (pair files or Hub ids) and/or `oasst_seed`.")
        self.stage = self.stage or stage_name(self.direction, self.iteration)
        if self.curate_candidates and self.direction != "forward":
            raise ValueError("curate_candidates needs a forward model: only M_k scores candidates")


def load_training_pairs(args: HumpbackSFTArguments) -> tuple[Dataset, dict[str, int]]:
    columns = PairColumns(args.instruction_column, args.output_column, args.source_column, args.id_column)
    parts, counts = [], {}
    if args.oasst_seed:
        seed, report = load_oasst_seed(args.oasst_seed, lang=args.oasst_lang, limit=args.seed_limit)
        parts.append(seed)
        counts[f"{args.oasst_seed} (oasst first-turn seed)"] = report.kept
    for name in args.data:
        pairs, report = load_pairs(name, columns, args.default_source, split=args.data_split)
        parts.append(pairs)
        counts[name] = report.kept
        if report.rejected:
            counts[f"{name} rejected (empty instruction or output)"] = report.rejected
    dataset = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if len(dataset) == 0:
        raise ValueError(f"No usable training pairs in {args.data or args.oasst_seed}")
    counts["training pairs"] = len(dataset)
    return dataset, counts


# SFTConfig keys that act only while TRL prepares the dataset or in its own collator, both replaced here by the
# swapped-field collator: a value other than the default would be silently ignored, so it is refused.
IGNORED_SFT_KEYS: dict[str, str] = {
    "packing": "rows are collated one pair per sequence",
    "padding_free": "rows are collated one pair per sequence",
    "completion_only_loss": "the loss is always on the completion only",
    "assistant_only_loss": "the loss is always on the completion only",
    "eos_token": "the end-of-turn token comes from the chat template",
    "chat_template_path": "set chat_template_name, or use a tokenizer that holds the template",
    "truncation_mode": "the output is always the part truncated (the instruction is never cut)",
    "dataset_num_proc": "the collator tokenizes each batch; no dataset is prepared",
    "dataset_text_field": "rows are read from instruction_column and output_column",
}
HUB_TOKEN_MESSAGE = (
    "hub_token is refused: it would be pickled into training_args.bin in every checkpoint and pushed with the model. "
    "Log in with `huggingface-cli login` or set the HF_TOKEN environment variable instead."
)


def check_training_args(training_args: SFTConfig) -> None:
    """Refuse, before anything loads, the SFTConfig values this training path would ignore, and a Hub token."""
    if training_args.hub_token:
        raise ValueError(HUB_TOKEN_MESSAGE)
    defaults = {spec.name: spec.default for spec in fields(SFTConfig)}
    for key, reason in IGNORED_SFT_KEYS.items():
        if getattr(training_args, key) != defaults[key]:
            raise ValueError(f"{key}={getattr(training_args, key)!r} is not supported by humpback sft ({reason}).")


def collator_pad_multiple(training_args: SFTConfig) -> int | None:
    # "auto" pads only on Neuron devices, which this project does not target.
    value = training_args.pad_to_multiple_of
    return None if value in (None, "auto") else int(value)


def configure(
    training_args: SFTConfig,
    script_args: HumpbackSFTArguments,
    model_args: ModelConfig,
    num_examples: int,
    user_keys: Collection[str] = (),
) -> None:
    # The collator tokenizes raw rows itself, so TRL must neither tokenize the dataset nor drop its columns.
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    training_args.remove_unused_columns = False
    if script_args.paper_schedule:
        apply_paper_schedule(
            training_args, num_examples, training_args.world_size, adapter=model_args.use_peft, user_keys=user_keys
        )
    if script_args.hub_prefix and not training_args.hub_model_id:
        training_args.hub_model_id = model_repo_id(script_args.hub_prefix, script_args.stage)


def build_trainer(
    script_args: HumpbackSFTArguments,
    training_args: SFTConfig,
    model_args: ModelConfig,
    callbacks: list[TrainerCallback] | None = None,
    user_keys: Collection[str] = (),
) -> tuple[SFTTrainer, dict[str, int]]:
    """`user_keys`: the SFTConfig keys the recipe or command line set, which `paper_schedule` keeps."""
    check_training_args(training_args)
    model_path = resolve_model(model_args.model_name_or_path)
    dataset, counts = load_training_pairs(script_args)
    configure(training_args, script_args, model_args, len(dataset), user_keys)
    # SFTConfig's trust_remote_code (default False) reaches the model through TRL; the tokenizer is loaded here.
    tokenizer = AutoTokenizer.from_pretrained(
        model_path, revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code
    )
    # The template used in training (the fallback or the chosen named one) becomes the tokenizer's own, so the
    # saved tokenizer files carry it.
    use_template(tokenizer, script_args.chat_template_name)
    collator = SwappedFieldCollator(
        tokenizer,
        direction=script_args.direction,
        max_length=training_args.max_length,
        system_prompt=script_args.system_prompt,
        backward_prompt=script_args.backward_prompt,
        tagging=Tagging(enabled=script_args.tagging),
        pad_to_multiple_of=collator_pad_multiple(training_args),
    )
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    trainer = SFTTrainer(
        model=model_path,
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=collator,
        callbacks=callbacks,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    return trainer, counts


def set_stop_tokens(trainer: SFTTrainer) -> list[int]:
    """Make the end-of-turn token the model was trained to emit its EOS, in the tokenizer and the generation config,
    so generation from the saved files alone (transformers.pipeline, vLLM, TGI) stops there. Qwen2.5 base, for one,
    ships EOS <|endoftext|> while its ChatML turns end with <|im_end|>. Returns the stop ids (end of turn first)."""
    tokenizer = trainer.processing_class
    stops = stop_token_ids(tokenizer)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(turn_end(tokenizer).token_ids[-1])
    generation_config = trainer.accelerator.unwrap_model(trainer.model).generation_config
    generation_config.eos_token_id = stops
    return stops


def save_outputs(
    trainer: SFTTrainer, script_args: HumpbackSFTArguments, model_args: ModelConfig, counts: dict[str, int]
) -> None:
    args = trainer.args
    output_dir = Path(args.output_dir)
    stops = set_stop_tokens(trainer)
    if trainer.accelerator.is_main_process:
        # Written before save_model, which pushes the folder: an adapter folder holds no generation config of its
        # own, and inference rebuilds the training prompts from the prompt settings.
        output_dir.mkdir(parents=True, exist_ok=True)
        trainer.accelerator.unwrap_model(trainer.model).generation_config.save_pretrained(str(output_dir))
        save_prompt_settings(trainer.data_collator, output_dir)
    trainer.save_model(str(output_dir))
    if not trainer.accelerator.is_main_process:
        return
    dataset = trainer.train_dataset
    dataset.to_json(str(output_dir / TRAINING_DATA_FILE), lines=True, force_ascii=False)
    data_repo = dataset_repo_id(script_args.hub_prefix, script_args.stage) if script_args.hub_prefix else None
    settings = {
        "learning_rate": args.learning_rate,
        "lr_scheduler": f"{args.lr_scheduler_type} {args.lr_scheduler_kwargs or ''}".strip(),
        "weight_decay": args.weight_decay,
        "effective_batch": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "max_steps": args.max_steps,
        "max_length": args.max_length,
        "quantization": "4-bit nf4 (QLoRA)"
        if model_args.load_in_4bit
        else ("8-bit" if model_args.load_in_8bit else "none"),
        "stop tokens": ", ".join(trainer.processing_class.convert_ids_to_tokens(stops)),
        "lora": f"r={model_args.lora_r} alpha={model_args.lora_alpha} dropout={model_args.lora_dropout} "
        f"targets={model_args.lora_target_modules}"
        if model_args.use_peft
        else "full fine-tuning",
    }
    card = model_card(
        base_model=model_args.model_name_or_path,
        stage=script_args.stage,
        direction=script_args.direction,
        tagging=trainer.data_collator.tagging,
        data=script_args.data + ([script_args.oasst_seed] if script_args.oasst_seed else []),
        counts=counts,
        training_dataset=data_repo,
        settings=settings,
    )
    card.save(str(output_dir / "README.md"))
    if args.push_to_hub:
        # save_model above already pushed the adapter; our card replaces the generic one it wrote.
        card.push_to_hub(trainer.hub_model_id)
        if data_repo:
            summary = f"The exact training set of `{trainer.hub_model_id}` ({script_args.direction} direction)."
            links = {"trained model": trainer.hub_model_id}
            private = args.hub_private_repo
            card = dataset_card(title=data_repo, summary=summary, counts=counts, links=links, private=private)
            push_dataset(dataset, card, data_repo, private=private)


def curation_callback(
    script_args: HumpbackSFTArguments, training_args: SFTConfig, settings: CurationSettings
) -> SelfCurationCallback | None:
    if not script_args.curate_candidates:
        return None
    pools = [
        load_pairs(name, default_source="augmented", split=script_args.data_split)[0]
        for name in script_args.curate_candidates
    ]
    candidates = concatenate_datasets(pools) if len(pools) > 1 else pools[0]
    iteration = script_args.iteration + 1
    return SelfCurationCallback(
        candidates,
        script_args.curation_output_dir or Path(training_args.output_dir) / "curation",
        settings,
        iteration=iteration,
        scorer=training_args.hub_model_id
        or (
            model_repo_id(script_args.hub_prefix, script_args.stage)
            if script_args.hub_prefix
            else training_args.output_dir
        ),
        hub_repo=curated_repo_id(script_args.hub_prefix, iteration) if script_args.hub_prefix else None,
    )


def train(
    script_args: HumpbackSFTArguments,
    training_args: SFTConfig,
    model_args: ModelConfig,
    curation: CurationSettings | None = None,
    user_keys: Collection[str] = (),
) -> SFTTrainer:
    check_training_args(training_args)
    callback = curation_callback(script_args, training_args, curation or CurationSettings())
    trainer, counts = build_trainer(
        script_args, training_args, model_args, [callback] if callback else None, user_keys=user_keys
    )
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None and Path(training_args.output_dir).is_dir():
        checkpoint = get_last_checkpoint(training_args.output_dir)
        if checkpoint:
            trainer.accelerator.print(f"Resuming from {checkpoint}")
    trainer.train(resume_from_checkpoint=checkpoint)
    save_outputs(trainer, script_args, model_args, counts)
    trainer.accelerator.print(f"Saved {script_args.stage} to {training_args.output_dir}")
    # The main process writes the card and data alone; tearing the process group down while it still works has
    # hung gloo runs, so every process waits for it first.
    trainer.accelerator.wait_for_everyone()
    trainer.end()
    return trainer
