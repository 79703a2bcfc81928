"""Training the forward or backward model on pair data with TRL's SFTTrainer and the swapped-field collator.

Load pairs (files, Hub ids, builtin:seed, an oasst1 export) -> build the trainer (QLoRA by default in the recipes) ->
train, resuming from the last checkpoint in output_dir -> save the adapter, tokenizer, card and the exact training
set -> optionally push the adapter and the training set to `<hub_prefix>-<stage>` and `<hub_prefix>-<stage>-data`.
The entry point is `humpback_trl.scripts.sft`.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field, fields
from fnmatch import fnmatch
from pathlib import Path

import torch
from datasets import Dataset, concatenate_datasets
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainerState,
    get_scheduler,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
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
from humpback_trl.paths import check_local
from humpback_trl.schedule import apply_paper_schedule
from humpback_trl.tagging import Tagging

logger = logging.getLogger(__name__)
# peft and TRL read `model.is_gradient_checkpointing`, deprecated in transformers 5; nothing of ours uses the old name.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

TRAINING_DATA_FILE = "training_data.jsonl"
TRAINER_STATE = "trainer_state.json"


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
    instruction_column: str = field(default="instruction", metadata={"help": "Column holding the instruction."})
    output_column: str = field(default="output", metadata={"help": "Column holding the output (the answer)."})
    source_column: str = field(
        default="source", metadata={"help": "Column holding each row's source (seed or augmented), for tagging."}
    )
    id_column: str = field(default="source_id", metadata={"help": "Column holding each row's unique id."})
    oasst_seed: str | None = field(
        default=None,
        metadata={
            "help": "oasst1 message export (local file or Hub id, e.g. OpenAssistant/oasst1): its first-turn "
            "rank-0 English pairs are added as seed."
        },
    )
    oasst_lang: str = field(default="en", metadata={"help": "Language of the oasst seed pairs kept."})
    seed_limit: int = field(default=3200, metadata={"help": "Cap on oasst seed pairs (paper: 3,200)."})
    direction: str = field(
        default="forward", metadata={"help": "forward: p(output|instruction); backward: p(instruction|output)."}
    )
    tagging: bool = field(default=True, metadata={"help": "Append the paper's source tags to forward instructions."})
    system_prompt: str | None = field(
        default=None, metadata={"help": "System message of every training prompt (default: the template's own)."}
    )
    backward_prompt: str = field(
        default=DEFAULT_BACKWARD_PROMPT,
        metadata={"help": "The backward model's user turn; {output} is the output to write an instruction for."},
    )
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
    curation_output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where curate_candidates' results go. Default: <output_dir>/_curation (the Hub push of the "
            "adapter leaves out names starting with _, as it leaves out checkpoint-*)."
        },
    )

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
    if model_args.use_peft and training_args.ddp_find_unused_parameters is None:
        # Under DDP the frozen base weights never get gradients; DDP would search for them on every step and warn.
        training_args.ddp_find_unused_parameters = False


def check_target_modules(model_path: str, training_args: SFTConfig, model_args: ModelConfig) -> None:
    """Match `lora_target_modules` against the model's module names on a weightless (meta device) copy built from
    its config, so a typo fails before the weights load; peft would refuse it only after loading them."""
    targets = model_args.lora_target_modules
    if not model_args.use_peft or not isinstance(targets, list) or "all-linear" in targets:
        return
    config = AutoConfig.from_pretrained(
        model_path, revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=training_args.trust_remote_code)
    names = [name for name, _ in model.named_modules()]
    # peft's rule for a list: a module matches a target that is its whole name or the end of it after a dot.
    missing = [t for t in targets if not any(name == t or name.endswith(f".{t}") for name in names)]
    if missing:
        modules = model.named_modules()
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in modules if isinstance(module, torch.nn.Linear)})
        raise ValueError(
            f"lora_target_modules {missing} match no module of {model_path}; its linear layers are {linear} "
            "(or use all-linear)"
        )


def check_scheduler(training_args: SFTConfig) -> None:
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
        raise ValueError(
            f"lr_scheduler_kwargs {training_args.lr_scheduler_kwargs} do not fit lr_scheduler_type {kind}: {error}"
        ) from None


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
    check_scheduler(training_args)
    check_target_modules(model_path, training_args, model_args)
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
    try:
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
        raise ValueError(f"model_init_kwargs: {error}") from error
    return trainer, counts


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


class HumpbackSFTTrainer(ExactResumeMixin, SFTTrainer):
    """SFTTrainer whose resumed run trains exactly as the uninterrupted one would have."""


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
    max_steps + 1. The callbacks still see the training begin and end (self-curation runs at the end)."""
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


# What Trainer.push_to_hub leaves out of the output folder it uploads (transformers' own patterns).
PUSH_IGNORED = ("_*", f"{PREFIX_CHECKPOINT_DIR}-*")


def curation_folder(script_args: HumpbackSFTArguments, training_args: SFTConfig) -> Path:
    """The callback's output folder. Inside the adapter folder, it must be one the adapter's push leaves out: the
    scored pool is a dataset of its own (pushed to `<hub_prefix>-curated-<k>`), not a file of the model repo."""
    output_dir = Path(training_args.output_dir).resolve()
    if not script_args.curation_output_dir:
        return output_dir / "_curation"
    folder = Path(script_args.curation_output_dir).resolve()
    if training_args.push_to_hub and folder.is_relative_to(output_dir) and folder != output_dir:
        top = folder.relative_to(output_dir).parts[0]
        if not any(fnmatch(top, pattern) for pattern in PUSH_IGNORED):
            raise ValueError(
                f"curation_output_dir {script_args.curation_output_dir} is inside output_dir and would be pushed "
                "with the adapter: name it _<something> there, or choose a folder outside output_dir."
            )
    return folder


def curation_callback(
    script_args: HumpbackSFTArguments, training_args: SFTConfig, settings: CurationSettings
) -> SelfCurationCallback | None:
    if not script_args.curate_candidates:
        return None
    folder = curation_folder(script_args, training_args)
    pools = [
        load_pairs(name, default_source="augmented", split=script_args.data_split)[0]
        for name in script_args.curate_candidates
    ]
    candidates = concatenate_datasets(pools) if len(pools) > 1 else pools[0]
    iteration = script_args.iteration + 1
    return SelfCurationCallback(
        candidates,
        folder,
        settings,
        iteration=iteration,
        scorer=training_args.hub_model_id
        or (
            model_repo_id(script_args.hub_prefix, script_args.stage)
            if script_args.hub_prefix
            else training_args.output_dir
        ),
        hub_repo=curated_repo_id(script_args.hub_prefix, iteration) if script_args.hub_prefix else None,
        private=training_args.hub_private_repo,
    )


def train(
    script_args: HumpbackSFTArguments,
    training_args: SFTConfig,
    model_args: ModelConfig,
    curation: CurationSettings | None = None,
    user_keys: Collection[str] = (),
) -> SFTTrainer:
    check_training_args(training_args)
    # Before the candidate pool loads: a missing model folder fails at once.
    check_local(model_args.model_name_or_path, "model_name_or_path")
    callback = curation_callback(script_args, training_args, curation or CurationSettings())
    trainer, counts = build_trainer(
        script_args, training_args, model_args, [callback] if callback else None, user_keys=user_keys
    )
    resume_and_train(trainer)
    save_outputs(trainer, script_args, model_args, counts)
    trainer.accelerator.print(f"Saved {script_args.stage} to {training_args.output_dir}")
    # The main process writes the card and data alone; tearing the process group down while it still works has
    # hung gloo runs, so every process waits for it first.
    trainer.accelerator.wait_for_everyone()
    trainer.end()
    return trainer
