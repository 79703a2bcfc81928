"""humpback-trl: instruction backtranslation (Humpback) and MAGPIE on TRL."""

from importlib import import_module
from typing import Any

from humpback_trl.process import die_with_parent_if_stage

__version__ = "0.1.0"

# A stage started by `humpback run` (and each of its accelerate workers) dies with its parent, even on kill -9.
die_with_parent_if_stage()

# Exports load on first use, so `import humpback_trl` stays light and `python -m humpback_trl.scripts.<stage>` does not
# import the stage twice.
_EXPORTS = {
    "SEED_TAG": "humpback_trl.tagging",
    "WEB_TAG": "humpback_trl.tagging",
    "Tagging": "humpback_trl.tagging",
    "SwappedFieldCollator": "humpback_trl.collators",
    "SelfCurationCallback": "humpback_trl.callbacks",
    "parse_score": "humpback_trl.scoring",
    "pre_query_template": "humpback_trl.magpie_template",
    "load_humpback": "humpback_trl.chat",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'humpback_trl' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
