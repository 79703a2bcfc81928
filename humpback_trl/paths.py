"""Model paths a user typed: a name that can only be a local path and does not exist fails at once, naming its
option. Kept free of heavy imports so the command line checks paths before it loads torch."""

from __future__ import annotations

from pathlib import Path

from humpback_trl.errors import MissingFileError

# Options whose values name a model or an adapter, in our dataclasses and in TRL's ModelConfig.
MODEL_OPTIONS = ("model_name_or_path", "adapter", "sft_adapter", "scorer_adapter")


def looks_local(name: str) -> bool:
    """A path no Hub id can be: absolute, ./ ../ or ~ first, or more than one '/' (a Hub id is NAME or ORG/NAME)."""
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..") or name.count("/") > 1


def check_local(name: str, option: str) -> str:
    """`name` with ~ expanded. A local-looking path that does not exist fails at once, naming `option`: the Hub
    client would otherwise retry it as a repo id for about a minute before failing."""
    if not looks_local(name):
        return name
    path = Path(name).expanduser()
    if not path.exists():
        raise MissingFileError(f"{option}: no such folder {path} (a Hub model is named ORG/NAME)")
    return str(path)
