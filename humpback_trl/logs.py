"""Logging for every entry point: INFO from this package on the main process, warnings elsewhere, and the
known-harmless messages of the libraries we build on filtered at their source.

Filtered (each checked harmless on this project's CPU and GPU paths):
- bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community": it then uses its own slower CPU path,
  which is what runs without the optional `kernels` package (and what ran offline anyway: `kernels` downloads its
  kernel from the Hub).
"""

from __future__ import annotations

import logging

# (logger name, start of the message) pairs that are dropped.
HARMLESS_LOG_RECORDS: tuple[tuple[str, str], ...] = (
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),
)
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_known_messages() -> None:
    """Install the filters; safe to call before the libraries are imported (loggers are looked up by name)."""
    for name, prefix in HARMLESS_LOG_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefix) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropPrefix(prefix))


def configure_logging(level: int = logging.INFO) -> None:
    """Show this package's records at `level` (pass the Trainer's `get_process_log_level()` in training scripts, so
    INFO shows on the main process only) and transformers' own at the same level."""
    quiet_known_messages()
    logging.basicConfig(format=FORMAT, datefmt="%H:%M:%S", level=logging.WARNING)
    logging.getLogger("humpback_trl").setLevel(level)
    import transformers

    transformers.utils.logging.set_verbosity(max(level, logging.WARNING))
