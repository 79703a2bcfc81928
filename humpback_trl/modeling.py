"""Load a model for inference (augmentation, curation, MAGPIE, chat): a base model plus an optional LoRA adapter
from a local folder or the Hub, optionally in 4-bit. The adapter is merged into a float base; a missing local path
fails at once, naming its option."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import PartialState
from peft import PeftConfig, PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from humpback_trl.builtin_models import resolve_model
from humpback_trl.chat_template import use_template
from humpback_trl.paths import check_local


@dataclass
class InferenceModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Base model; defaults to the base named in the adapter's config."}
    )
    adapter: str | None = field(
        default=None,
        metadata={
            "help": "LoRA adapter: a local folder or a Hub repo id. Merged into a float base (faster generation); "
            "kept beside a 4-bit one."
        },
    )
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the base in 4-bit nf4 (bitsandbytes)."})
    dtype: str = field(
        default="auto", metadata={"help": "auto, bfloat16, float16 or float32 (auto: bf16 on GPU, fp32 on CPU)."}
    )
    model_revision: str | None = field(
        default=None, metadata={"help": "Hub revision (branch, tag or commit) of the base model; None is main."}
    )
    chat_template_name: str | None = field(
        default=None,
        metadata={"help": "For tokenizers holding several named templates (Command R+): the one to use (default)."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run the model's own code from the Hub (tokenizer and model loaders)."}
    )

    def __post_init__(self) -> None:
        if not self.model_name_or_path and not self.adapter:
            raise ValueError("Set model_name_or_path, adapter, or both.")
        # A missing local folder fails here, before the Hub client retries it as a repo id for a minute.
        if self.model_name_or_path:
            self.model_name_or_path = check_local(self.model_name_or_path, "model_name_or_path")
        if self.adapter:
            self.adapter = check_local(self.adapter, "adapter")


def base_model_name(args: InferenceModelArguments) -> str:
    if args.model_name_or_path:
        return resolve_model(args.model_name_or_path)
    return PeftConfig.from_pretrained(args.adapter).base_model_name_or_path


def _tokenizer(args: InferenceModelArguments) -> PreTrainedTokenizerBase:
    if args.adapter:
        try:
            return AutoTokenizer.from_pretrained(args.adapter, trust_remote_code=args.trust_remote_code)
        except (OSError, ValueError):
            pass
    return AutoTokenizer.from_pretrained(
        base_model_name(args), revision=args.model_revision, trust_remote_code=args.trust_remote_code
    )


def torch_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, name)


def load_tokenizer(args: InferenceModelArguments) -> PreTrainedTokenizerBase:
    """The adapter's tokenizer when it saved one (it is the one training used), else the base model's, with the
    template every stage renders with as its own (`chat_template_name` picks one of several named templates)."""
    return use_template(_tokenizer(args), args.chat_template_name)


def load_model(args: InferenceModelArguments) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    state = PartialState(cpu=not torch.cuda.is_available())
    dtype = torch_dtype(args.dtype)
    quantization = (
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        if args.load_in_4bit
        else None
    )
    model = AutoModelForCausalLM.from_pretrained(
        base_model_name(args),
        revision=args.model_revision,
        dtype=dtype,
        quantization_config=quantization,
        device_map={"": state.device} if torch.cuda.is_available() else None,
        trust_remote_code=args.trust_remote_code,
    )
    if args.adapter:
        model = PeftModel.from_pretrained(model, args.adapter)
        if not args.load_in_4bit:
            # One matrix per layer instead of base + A @ B on every token: generation and scoring run at the base
            # model's speed. A 4-bit base cannot take the adapter in (merging would round it to 4 bits).
            model = model.merge_and_unload()
    model.eval()
    return model, load_tokenizer(args)


def adapter_folder(args: InferenceModelArguments) -> Path | None:
    """The local folder of the adapter (for its prompt settings), downloading nothing beyond what peft fetched."""
    if not args.adapter:
        return None
    path = Path(args.adapter)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(args.adapter, allow_patterns=["*.json"]))
