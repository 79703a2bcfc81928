"""The training tail every trainer shares (SFT, DPO, KTO, and any other TRL trainer), and the SFT stage.

The tail, in the order a stage calls it (preference_training.py and grpo_training.py are the other users):
- `check_before_loading(training_args)`: what must never reach a saved file (a Hub token), refused first;
- `prepare_training_args(...)`: hub_model_id from `<hub_prefix>-<stage>`, the DDP rule for adapters and the
  ModelConfig values TRL passes to from_pretrained, the same for every trainer;
- `check_before_weights(...)`: once the arguments are final, the scheduler's kwargs and a fresh LoRA's targets;
- the stage builds its trainer from a class that mixes in `ExactResumeMixin` and `PortableSaveMixin` (inside
  `logs.peft_wrapping()` when it wraps a model in peft), then calls `make_base_portable(trainer, base)`;
- `train_and_publish(trainer, describe)`: train, resuming exactly from the last checkpoint -> the stage's
  `describe(trainer)` says what it publishes (an `Artifact`) -> save the model with the files beside it, the exact
  training set and the card -> push the model, the card and the training set (`<hub_prefix>-<stage>-data`).
Cards share `hub.training_card` and the settings `run_settings`.

The SFT stage: load pairs (files, Hub ids, builtin:seed, an oasst1 export) -> build SFTTrainer with the
swapped-field collator (QLoRA by default in the recipes) -> the tail. The entry point is `humpback_trl.scripts.sft`.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from datasets import Dataset, concatenate_datasets
from huggingface_hub import ModelCard
from peft.utils import CONFIG_NAME as ADAPTER_CONFIG_NAME
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainerState,
    TrainingArguments,
    get_scheduler,
)
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import ModelConfig, SFTConfig, SFTTrainer, get_peft_config, get_quantization_config

from humpback_trl.builtin_models import portable_name, resolve_model
from humpback_trl.chat_template import stop_token_ids, turn_end, use_template
from humpback_trl.collators import SwappedFieldCollator, save_prompt_settings
from humpback_trl.configs import HumpbackSFTArguments
from humpback_trl.errors import UserError
from humpback_trl.hub import (
    dataset_card,
    dataset_repo_id,
    model_card,
    model_repo_id,
    public_name,
    push_dataset,
)
from humpback_trl.logs import peft_wrapping
from humpback_trl.modeling import record_base
from humpback_trl.oasst import load_oasst_seed
from humpback_trl.pairs import PairColumns, load_pairs
from humpback_trl.paths import check_local
from humpback_trl.schedule import apply_paper_schedule
from humpback_trl.stage_outputs import TRAINING
from humpback_trl.tagging import Tagging

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
HUB_TOKEN_MESSAGE = (
    "hub_token is refused: it would be pickled into training_args.bin in every checkpoint and pushed with the model. "
    "Log in with `huggingface-cli login` or set the HF_TOKEN environment variable instead."
)


# ---- The tail every training stage shares ----


def check_before_loading(training_args: TrainingArguments) -> None:
    """What no trainer may save, refused before anything loads: a Hub token would be pickled into
    training_args.bin in every checkpoint and pushed with the model."""
    if training_args.hub_token:
        raise UserError(HUB_TOKEN_MESSAGE)


def prepare_training_args(
    training_args: TrainingArguments,
    model_args: ModelConfig,
    *,
    stage: str,
    hub_prefix: str | None,
    adapter: bool,
    loads_model: bool,
) -> None:
    """The values every stage sets alike. `adapter`: only adapter weights train; `loads_model`: TRL loads the model
    from its name (with model_init_kwargs), rather than getting a model the stage built."""
    if hub_prefix and not training_args.hub_model_id:
        training_args.hub_model_id = model_repo_id(hub_prefix, stage)
    if adapter and training_args.ddp_find_unused_parameters is None:
        # Under DDP the frozen base weights never get gradients; DDP would search for them on every step and warn.
        training_args.ddp_find_unused_parameters = False
    if loads_model:
        training_args.model_init_kwargs = {
            "revision": model_args.model_revision,
            "attn_implementation": model_args.attn_implementation,
            "dtype": model_args.dtype,
            **(training_args.model_init_kwargs or {}),
        }


def quantization(model_args: ModelConfig) -> str:
    return "4-bit nf4 (QLoRA)" if model_args.load_in_4bit else ("8-bit" if model_args.load_in_8bit else "none")


def lora_settings(model_args: ModelConfig) -> str:
    if not model_args.use_peft:
        return "full fine-tuning"
    return (
        f"r={model_args.lora_r} alpha={model_args.lora_alpha} dropout={model_args.lora_dropout} "
        f"targets={model_args.lora_target_modules}"
    )


def run_settings(args: TrainingArguments, model_args: ModelConfig, lora: str) -> dict[str, object]:
    """The settings every card lists; a stage adds its own (loss, reference model, stop tokens)."""
    return {
        "learning_rate": args.learning_rate,
        "lr_scheduler": f"{getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)} "
        f"{args.lr_scheduler_kwargs or ''}".strip(),
        "weight_decay": args.weight_decay,
        "effective_batch": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "max_steps": args.max_steps,
        "max_length": getattr(args, "max_length", None),
        "quantization": quantization(model_args),
        "lora": lora,
    }


def make_portable(folder: Path, args: TrainingArguments, base: str | None) -> None:
    """Rewrite what a save wrote with local paths: the adapter config's and peft's card's base (the folder the
    weights loaded from, on this machine only) becomes `base`, and training_args.bin names its output folder
    by its name alone."""
    config = folder / ADAPTER_CONFIG_NAME
    if base and config.is_file():
        settings = json.loads(config.read_text(encoding="utf-8"))
        local = settings["base_model_name_or_path"]
        config.write_text(json.dumps({**settings, "base_model_name_or_path": base}, indent=2), encoding="utf-8")
        card = folder / "README.md"
        if card.is_file():
            text = card.read_text(encoding="utf-8")
            # peft's card names the base as the loaded model's config does: the local folder, also where the adapter
            # config names it portably (DPO, KTO and GRPO continue M_k's adapter, whose config names `base` already).
            names = {local, ModelCard(text).data.base_model} - {None, ""}
            for name in sorted(names, key=len, reverse=True):
                text = text.replace(name, base)
            card.write_text(text, encoding="utf-8")
    portable_args = copy.copy(args)
    portable_args.output_dir = Path(args.output_dir).name
    torch.save(portable_args, folder / TRAINING_ARGS_NAME)


class PortableSaveMixin:
    """For any Trainer: every save (the model and each checkpoint) names no local path, so the folder loads on any
    machine; `make_base_portable` says which base the adapter names."""

    portable_base: str | None = None

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            make_portable(Path(output_dir or self.args.output_dir), self.args, self.portable_base)


def make_base_portable(trainer: PortableSaveMixin, base: str) -> None:
    """The adapter names `base` as the user gave it, a built-in model by its upstream Hub id (`portable_name`),
    never the local folder it was loaded from. peft still sees that folder while saving: it reads the base's
    config there to tell whether the vocabulary changed."""
    trainer.portable_base = portable_name(base)


def check_target_modules(model_path: str, training_args: TrainingArguments, model_args: ModelConfig) -> None:
    """Match `lora_target_modules` against the model's module names on a weightless (meta device) copy built from
    its config, so a typo fails before the weights load; peft would refuse it only after loading them."""
    targets = model_args.lora_target_modules
    if not model_args.use_peft or not isinstance(targets, list) or "all-linear" in targets:
        return
    # TRL's configs carry trust_remote_code (TrainingArguments itself does not).
    trust_remote_code = getattr(training_args, "trust_remote_code", False)
    config = AutoConfig.from_pretrained(
        model_path, revision=model_args.model_revision, trust_remote_code=trust_remote_code
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    names = [name for name, _ in model.named_modules()]
    # peft's rule for a list: a module matches a target that is its whole name or the end of it after a dot.
    missing = [t for t in targets if not any(name == t or name.endswith(f".{t}") for name in names)]
    if missing:
        modules = model.named_modules()
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in modules if isinstance(module, torch.nn.Linear)})
        raise UserError(
            f"lora_target_modules {missing} match no module of {model_path}; its linear layers are {linear} "
            "(or use all-linear)"
        )


def check_scheduler(training_args: TrainingArguments) -> None:
    """Build the learning-rate scheduler on a dummy optimizer, so a wrong `lr_scheduler_kwargs` key fails before
    the model loads instead of when training starts."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    steps = max(training_args.max_steps, 1)
    try:
        get_scheduler(
            training_args.lr_scheduler_type,
            optimizer,
            num_warmup_steps=training_args.get_warmup_steps(steps),
            num_training_steps=steps,
            scheduler_specific_kwargs=training_args.lr_scheduler_kwargs or {},
        )
    except (TypeError, ValueError) as error:
        kind = getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)
        raise UserError(
            f"lr_scheduler_kwargs {training_args.lr_scheduler_kwargs} do not fit lr_scheduler_type {kind}: {error}"
        ) from None


def check_before_weights(training_args: TrainingArguments, model_args: ModelConfig, fresh_lora_on: str | None) -> None:
    """After the training arguments are final, before any weight loads: the scheduler's kwargs, and the LoRA targets
    of a fresh adapter on the model `fresh_lora_on` (None when the stage continues an adapter or trains fully)."""
    check_scheduler(training_args)
    if fresh_lora_on is not None:
        check_target_modules(fresh_lora_on, training_args, model_args)


class ExactResumeMixin:
    """For any Trainer: a resumed run trains exactly as the uninterrupted one would have."""

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        # TRL trains QLoRA adapters in bfloat16, but peft's load_adapter casts loaded adapters to float32
        # (autocast_adapter_dtype), so a resumed 4-bit run would train the rest of its steps at another precision
        # (adapters 1.5e-3 apart after 8 tiny steps). The dtypes are restored before the optimizer is built.
        dtypes = {name: param.dtype for name, param in self.model.named_parameters() if param.requires_grad}
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        for name, param in self.model.named_parameters():
            if name in dtypes and param.dtype != dtypes[name]:
                param.data = param.data.to(dtypes[name])


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The last complete checkpoint in `output_dir`. Checkpoints are written in place, file by file, with the trainer
    state last: one killed while saving has no state file and is skipped (transformers' get_last_checkpoint would
    resume from it and fail, or load a half-written optimizer)."""
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    folders = Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*")
    steps = {int(m.group(1)): path for path in folders if (m := pattern.match(path.name))}
    complete = [step for step, path in steps.items() if (path / TRAINER_STATE).is_file()]
    return str(steps[max(complete)]) if complete else None


def finish_from_checkpoint(trainer: Trainer, checkpoint: str) -> None:
    """A run killed after its last checkpoint: load it and end training without a step. transformers' train()
    always takes one step before it checks max_steps, so resuming from step == max_steps would train step
    max_steps + 1. The callbacks still see the training begin and end."""
    trainer._load_from_checkpoint(checkpoint)
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE))
    handler = trainer.callback_handler
    trainer.control = handler.on_train_begin(trainer.args, trainer.state, trainer.control)
    trainer.control = handler.on_train_end(trainer.args, trainer.state, trainer.control)


def resume_and_train(trainer: Trainer) -> None:
    """Train from `resume_from_checkpoint`, else from the last complete checkpoint in the output folder, never past
    the planned steps: a checkpoint at the last step (a run killed after it, or a rerun that only publishes) ends
    training without a step."""
    checkpoint = trainer.args.resume_from_checkpoint or last_checkpoint(trainer.args.output_dir)
    if checkpoint:
        trainer.accelerator.print(f"Resuming from {checkpoint}")
        state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE))
        planned = trainer.args.max_steps if trainer.args.max_steps > 0 else state.max_steps
        if 0 < planned <= state.global_step:
            finish_from_checkpoint(trainer, checkpoint)
            return
    trainer.train(resume_from_checkpoint=checkpoint)


@dataclass
class Artifact:
    """What a training stage publishes, described once it has trained (`train_and_publish`'s `describe`)."""

    stage: str
    hub_prefix: str | None
    base: str  # the base model as the user named it (a built-in name, a Hub id, a folder)
    training_set: Dataset  # the exact rows trained on, as the stage wants them saved
    counts: Mapping[str, int]
    card: Callable[[str | None], ModelCard]  # given the training set's Hub repo (None when not pushed)
    data_summary: str  # the training set's Hub card says it first; {model} stands for the trained model's repo
    data_links: Mapping[str, str] = field(default_factory=dict)  # besides the trained model
    # Files beside the model, written before save_model (which pushes the folder): prompt settings, generation config.
    write_beside: Callable[[Path], None] = lambda folder: None


def save_and_publish(trainer: Trainer, artifact: Artifact) -> None:
    args = trainer.args
    output_dir = Path(args.output_dir)
    main = trainer.accelerator.is_main_process
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        artifact.write_beside(output_dir)
        record_base(output_dir, artifact.base)
    trainer.save_model(str(output_dir))
    if main:
        artifact.training_set.to_json(str(output_dir / TRAINING.training_data), lines=True, force_ascii=False)
        data_repo = dataset_repo_id(artifact.hub_prefix, artifact.stage) if artifact.hub_prefix else None
        card = artifact.card(data_repo)
        card.save(str(output_dir / "README.md"))
        if args.push_to_hub:
            # save_model above already pushed the model; our card replaces the generic one it wrote.
            card.push_to_hub(trainer.hub_model_id)
            if data_repo:
                links = {"trained model": trainer.hub_model_id, **artifact.data_links}
                private = args.hub_private_repo
                data_card = dataset_card(
                    title=data_repo,
                    summary=artifact.data_summary.format(model=trainer.hub_model_id),
                    counts={public_name(key): value for key, value in artifact.counts.items()},
                    links=links,
                    private=private,
                )
                push_dataset(artifact.training_set, data_card, data_repo, private=private)
    trainer.accelerator.print(f"Saved {artifact.stage} to {output_dir}")
    # The main process writes the card and data alone; tearing the process group down while it still works has
    # hung gloo runs, so every process waits for it first.
    trainer.accelerator.wait_for_everyone()


def train_and_publish(trainer: Trainer, describe: Callable[[Trainer], Artifact]) -> Trainer:
    """Train (resuming exactly), then save and push what `describe(trainer)` says, on every process (describe may
    change the model, e.g. drop a reference adapter, before it is saved)."""
    resume_and_train(trainer)
    save_and_publish(trainer, describe(trainer))
    trainer.end()
    return trainer


# ---- The SFT stage ----


def load_training_pairs(args: HumpbackSFTArguments) -> tuple[Dataset, dict[str, int]]:
    columns = PairColumns(
        args.instruction_column, args.output_column, args.source_column, args.id_column, settable=True
    )
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
        raise UserError(f"No usable training pairs in {args.data or args.oasst_seed}")
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


def check_training_args(training_args: SFTConfig) -> None:
    """Refuse, before anything loads, a Hub token and the SFTConfig values this training path would ignore."""
    check_before_loading(training_args)
    defaults = {spec.name: spec.default for spec in fields(SFTConfig)}
    for key, reason in IGNORED_SFT_KEYS.items():
        if getattr(training_args, key) != defaults[key]:
            raise UserError(f"{key}={getattr(training_args, key)!r} is not supported by humpback sft ({reason}).")


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
    prepare_training_args(
        training_args,
        model_args,
        stage=script_args.stage,
        hub_prefix=script_args.hub_prefix,
        adapter=model_args.use_peft,
        loads_model=True,
    )


def build_trainer(
    script_args: HumpbackSFTArguments,
    training_args: SFTConfig,
    model_args: ModelConfig,
    callbacks: list[TrainerCallback] | None = None,
    user_keys: Collection[str] = (),
) -> tuple[SFTTrainer, dict[str, int]]:
    """`user_keys`: the SFTConfig keys the recipe or command line set, which `paper_schedule` keeps."""
    check_training_args(training_args)
    model_path = resolve_model(check_local(model_args.model_name_or_path, "model_name_or_path"))
    dataset, counts = load_training_pairs(script_args)
    configure(training_args, script_args, model_args, len(dataset), user_keys)
    check_before_weights(training_args, model_args, model_path)
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
    try:
        with peft_wrapping():
            trainer = HumpbackSFTTrainer(
                model=model_path,
                args=training_args,
                train_dataset=dataset,
                processing_class=tokenizer,
                data_collator=collator,
                callbacks=callbacks,
                quantization_config=get_quantization_config(model_args),
                peft_config=get_peft_config(model_args),
            )
    except TypeError as error:
        # A key of model_init_kwargs that is neither a from_pretrained option nor a config value reaches the model
        # class's __init__, which refuses it before any weight loads.
        if "unexpected keyword argument" not in str(error):
            raise
        raise UserError(f"model_init_kwargs: {error}") from error
    make_base_portable(trainer, model_args.model_name_or_path)
    return trainer, counts


class HumpbackSFTTrainer(ExactResumeMixin, PortableSaveMixin, SFTTrainer):
    """SFTTrainer whose resumed run trains exactly as the uninterrupted one would have, and whose saves load
    anywhere."""


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


def describe_sft(
    script_args: HumpbackSFTArguments, model_args: ModelConfig, counts: dict[str, int]
) -> Callable[[SFTTrainer], Artifact]:
    """What an SFT stage publishes: the adapter with its generation config and prompt settings (inference rebuilds
    the training prompts from them), the exact training set and the card."""

    def describe(trainer: SFTTrainer) -> Artifact:
        stops = set_stop_tokens(trainer)
        args = trainer.args
        base = model_args.model_name_or_path
        settings = {
            **run_settings(args, model_args, lora_settings(model_args)),
            "stop tokens": ", ".join(trainer.processing_class.convert_ids_to_tokens(stops)),
        }

        def write_beside(folder: Path) -> None:
            # An adapter folder holds no generation config of its own.
            trainer.accelerator.unwrap_model(trainer.model).generation_config.save_pretrained(str(folder))
            save_prompt_settings(trainer.data_collator, folder)

        def card(data_repo: str | None) -> ModelCard:
            return model_card(
                base_model=portable_name(base),
                stage=script_args.stage,
                direction=script_args.direction,
                tagging=trainer.data_collator.tagging,
                data=script_args.data + ([script_args.oasst_seed] if script_args.oasst_seed else []),
                counts=counts,
                training_dataset=data_repo,
                settings=settings,
            )

        return Artifact(
            stage=script_args.stage,
            hub_prefix=script_args.hub_prefix,
            base=base,
            training_set=trainer.train_dataset,
            counts=counts,
            card=card,
            data_summary=f"The exact training set of `{{model}}` ({script_args.direction} direction).",
            write_beside=write_beside,
        )

    return describe


def train(
    script_args: HumpbackSFTArguments,
    training_args: SFTConfig,
    model_args: ModelConfig,
    callbacks: list[TrainerCallback] | None = None,
    user_keys: Collection[str] = (),
) -> SFTTrainer:
    """`callbacks`: any TrainerCallback for the trainer, e.g. a SelfCurationCallback scoring a pool when training
    ends (the Python API; the loop curates in its own stage)."""
    trainer, counts = build_trainer(script_args, training_args, model_args, callbacks, user_keys=user_keys)
    return train_and_publish(trainer, describe_sft(script_args, model_args, counts))
