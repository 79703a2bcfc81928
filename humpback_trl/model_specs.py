"""A model named on the command line (evaluation models, curation judges): a LoRA adapter folder, a base model
folder, `builtin:tiny-llama` or a Hub id of either, turned into the loader's arguments."""

from __future__ import annotations

import gc
from pathlib import Path

import torch

from humpback_trl.modeling import InferenceModelArguments
from humpback_trl.pairs import BUILTIN_PREFIX

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter(name: str) -> bool:
    """A local folder with an adapter config, or a Hub repo whose files include one (offline: whose cached files
    include one)."""
    path = Path(name)
    if path.exists() or name.startswith(BUILTIN_PREFIX):
        return (path / ADAPTER_CONFIG).is_file()
    from huggingface_hub import file_exists, try_to_load_from_cache
    from huggingface_hub.errors import OfflineModeIsEnabled

    try:
        return file_exists(name, ADAPTER_CONFIG)
    except OfflineModeIsEnabled:
        return isinstance(try_to_load_from_cache(name, ADAPTER_CONFIG), str)


def model_arguments(name: str, dtype: str = "auto", load_in_4bit: bool = False) -> InferenceModelArguments:
    if is_adapter(name):
        return InferenceModelArguments(adapter=name, dtype=dtype, load_in_4bit=load_in_4bit)
    return InferenceModelArguments(model_name_or_path=name, dtype=dtype, load_in_4bit=load_in_4bit)


def short_name(name: str) -> str:
    """The last part of a path or repo id ("outputs/quickstart/m1" -> "m1"), for tables and file names."""
    return Path(name.removeprefix(BUILTIN_PREFIX).rstrip("/")).name or name


def release_memory() -> None:
    """Return the memory of a model the caller has just dropped (`del model`) before the next one loads: a judge
    after M_k, each evaluated model in turn."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
