"""humpback-trl: instruction backtranslation (Humpback) and MAGPIE on TRL."""

from humpback_trl.collators import SwappedFieldCollator
from humpback_trl.tagging import SEED_TAG, WEB_TAG, Tagging

__all__ = ["SEED_TAG", "WEB_TAG", "SwappedFieldCollator", "Tagging"]
__version__ = "0.1.0"
