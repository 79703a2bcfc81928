"""Load a model for inference (augmentation, curation, MAGPIE, chat): a base model plus an optional LoRA adapter
from a local folder or the Hub, optionally in 4-bit. The adapter is merged into a float base; a missing local path
fails at once, naming its option.

An adapter's base: its prompt settings' built-in name when it was trained on a built-in model (the same
de-quantized weights), else the base its adapter config names (a Hub id, or a path as the trainer gave it)."""

from __future__ import annotations

import json
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

from humpback_trl.builtin_models import BUILTIN_PREFIX, portable_name, resolve_model
from humpback_trl.chat_template import use_template
from humpback_trl.collators import PROMPT_SETTINGS_FILE
from humpback_trl.configs import InferenceModelArguments
from humpback_trl.logs import peft_wrapping

# The prompt settings' key holding the built-in model an adapter was trained on.
BUILTIN_BASE = "builtin_base_model"


def adapter_base_name(adapter: str) -> str:
    """The name of the model `adapter` was trained on: its built-in name, else its config's base."""
    settings = adapter_files(adapter) / PROMPT_SETTINGS_FILE
    builtin = json.loads(settings.read_text(encoding="utf-8")).get(BUILTIN_BASE) if settings.is_file() else None
    return builtin or PeftConfig.from_pretrained(adapter).base_model_name_or_path


def adapter_base(adapter: str) -> str:
    """The folder or Hub id the base of `adapter` loads from (see the module docstring)."""
    return resolve_model(adapter_base_name(adapter))


def record_base(folder: str | Path, base: str) -> None:
    """Keep a built-in base's name in the prompt settings of the adapter in `folder`, whose config names the
    upstream model instead (`portable_name`)."""
    path = Path(folder) / PROMPT_SETTINGS_FILE
    if base.startswith(BUILTIN_PREFIX) and portable_name(base) != base and path.is_file():
        settings = json.loads(path.read_text(encoding="utf-8"))
        path.write_text(json.dumps({**settings, BUILTIN_BASE: base}, indent=2) + "\n", encoding="utf-8")


def base_model_name(args: InferenceModelArguments) -> str:
    return resolve_model(args.model_name_or_path) if args.model_name_or_path else adapter_base(args.adapter)


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
        with peft_wrapping():
            model = PeftModel.from_pretrained(model, args.adapter)
        if not args.load_in_4bit:
            # One matrix per layer instead of base + A @ B on every token: generation and scoring run at the base
            # model's speed. A 4-bit base cannot take the adapter in (merging would round it to 4 bits).
            model = model.merge_and_unload()
    model.eval()
    return model, load_tokenizer(args)


def adapter_files(adapter: str) -> Path:
    """The adapter's folder, or the local copy of its Hub repo's small files (configs, prompt settings)."""
    path = Path(adapter)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(adapter, allow_patterns=["*.json"]))


def adapter_folder(args: InferenceModelArguments) -> Path | None:
    """The local folder of the adapter (for its prompt settings), downloading nothing beyond its small files."""
    return adapter_files(args.adapter) if args.adapter else None
