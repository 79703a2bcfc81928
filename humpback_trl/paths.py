"""Model paths a user typed: a name that can only be a local path and does not exist fails at once, naming its
option; and the one rule by which a saved or pushed file names a model, an adapter or a data file (`public_name`).
Kept free of heavy imports so the command line checks paths before it loads torch."""

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


def public_name(name: str) -> str:
    """How every card, report and pushed row names a model, an adapter or a data file, so that none carries a local
    prefix (the trainer's home, a scratch disk) and each still says what it was:

    - a Hub id, a built-in name (`builtin:smollm2-135m-instruct`) or a relative path: as given, none holds one;
    - the folder a built-in model was resolved to (in the project cache): its built-in name;
    - any other absolute or ~ path: relative to the working directory when inside it (as the user would have typed
      it), else by its last two parts (`run/m0`: the run's folder and the stage).
    """
    if not name.startswith(("/", "~")):
        return name
    path = Path(name).expanduser()
    # Imported here: builtin_models loads torch, which only a local path needs.
    from humpback_trl.builtin_models import builtin_of_folder

    builtin = builtin_of_folder(path)
    if builtin is not None:
        return builtin
    if path.is_relative_to(Path.cwd()) and path != Path.cwd():
        return str(path.relative_to(Path.cwd()))
    return str(Path(*path.parts[-2:]))
