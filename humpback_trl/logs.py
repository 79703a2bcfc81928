"""Logging for every entry point: INFO from this package on the main process, warnings elsewhere, and none of the
libraries' known-harmless messages.

Quieted where they arise (each checked harmless on this project's CPU and GPU paths), not filtered from the terminal:
- bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community": importing bitsandbytes (peft and TRL
  import it whenever it is installed) looks for an optional fast 4-bit CPU kernel on the Hub and, offline or
  without it, logs that it uses its own CPU path, which is what 4-bit runs on CPU use. The records (and, offline,
  `kernels`' note that it skips the publisher check) are dropped at the libraries' own loggers, by filters
  installed before any entry point imports them (humpback_trl/scripts/__init__.py).
- transformers' FutureWarning "`is_gradient_checkpointing` is deprecated": peft reads the old name whenever it wraps
  a model in a PeftModel; `peft_wrapping()` silences that one warning around our calls that make one.
- datasets' progress bars ("Generating train split", "Creating json from Arrow format", "Saving the dataset"):
  in this project they time file plumbing of a second or less, while every long step has its own bar (the shard
  runner's, the Trainer's); `configure_logging` turns them off for the process.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# (logger name, start of the message) pairs that are dropped.
HARMLESS_LOG_RECORDS: tuple[tuple[str, str], ...] = (
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),
    # The same lookup, offline: `kernels` says it cannot check the kernel's publisher before it fails to find it.
    ("kernels._internals.hf_hub", "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'"),
)
# transformers 5 renamed `is_gradient_checkpointing`; peft (0.17-0.21) still reads the old name in PeftModel.__init__.
PEFT_DEPRECATED_READ = "`is_gradient_checkpointing` is deprecated"
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


@contextmanager
def peft_wrapping() -> Iterator[None]:
    """Around a call that wraps a model in a PeftModel (PeftModel.from_pretrained, a TRL trainer given a
    peft_config): peft's read of the deprecated attribute warns, nothing else is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PEFT_DEPRECATED_READ, category=FutureWarning)
        yield


def configure_logging(level: int = logging.INFO) -> None:
    """Show this package's records at `level` (pass the Trainer's `get_process_log_level()` in training scripts, so
    INFO shows on the main process only) and transformers' own at the same level; datasets' bars off."""
    quiet_known_messages()
    logging.basicConfig(format=FORMAT, datefmt="%H:%M:%S", level=logging.WARNING)
    logging.getLogger("humpback_trl").setLevel(level)
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity(max(level, logging.WARNING))
    datasets.disable_progress_bars()
