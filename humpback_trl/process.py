"""Stage processes die with the process that started them.

`humpback run` starts each stage as `accelerate launch`, whose launcher starts the workers in sessions of their own
(torchrun). A `kill -9` of the loop (or of its process group) would otherwise leave workers writing into the output
folder while a rerun starts. Linux's parent-death signal closes that gap link by link: the loop sets it on the
launcher it starts, and every process that imports humpback_trl with STAGE_ENV set (the workers, which inherit the
environment) sets it on itself, so each process is killed when its parent dies, whatever killed it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

STAGE_ENV = "HUMPBACK_STAGE_PROCESS"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent exits (Linux only; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return
    # The parent may have died before the call above: then this process was already re-parented.
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


def die_with_parent_if_stage() -> None:
    if os.environ.get(STAGE_ENV) == "1":
        die_with_parent()


def run_stage_process(command: list[str]) -> int:
    """Run a stage command to its end; it (and, through STAGE_ENV, every process it starts) dies with this one."""
    environment = {**os.environ, STAGE_ENV: "1"}
    return subprocess.run(command, env=environment, preexec_fn=die_with_parent).returncode
