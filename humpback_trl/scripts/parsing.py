"""The parser of the commands whose options were renamed: TRL's TrlParser, reading an old name (`configs.RENAMED`)
in a recipe or on the command line as the new one, with a one-line deprecation note."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

from trl import TrlParser

from humpback_trl.configs import RENAMED

logger = logging.getLogger(__name__)


def current_name(name: str) -> str:
    """`name`, or the name it was renamed to (with a note saying so)."""
    new = RENAMED.get(name)
    if new is None:
        return name
    logger.warning("%s is deprecated: it is now %s (the old name is read until the next release)", name, new)
    return new


def current_flag(token: str) -> str:
    """`--old` / `--old=value` as the renamed option; any other token as it is."""
    if not token.startswith("--"):
        return token
    name, equals, value = token[2:].partition("=")
    return f"--{current_name(name)}{equals}{value}"


class HumpbackParser(TrlParser):
    def parse_args_and_config(self, args: Iterable[str] | None = None, *rest: Any, **kwargs: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        return super().parse_args_and_config([current_flag(token) for token in argv], *rest, **kwargs)

    def set_defaults_with_config(self, **config: Any) -> list[str]:
        return super().set_defaults_with_config(**{current_name(key): value for key, value in config.items()})
