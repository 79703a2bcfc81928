"""Every stage of `humpback run` uses the machine's cores: accelerate alone gives each process one thread unless its
config says `use_cpu: true`, which the shipped CPU config cannot (it would run a single plain process)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from humpback_trl.configs import LoopArguments
from humpback_trl.pipeline import Stage, cpu_threads_per_process

CORES = len(os.sched_getaffinity(0))


def threads_option(command: list[str]) -> str:
    return command[command.index("--num_cpu_threads_per_process") + 1]


def test_the_cores_are_shared_among_a_stage_processes(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cpu_threads_per_process(1) == CORES
    assert cpu_threads_per_process(CORES) == 1
    assert cpu_threads_per_process(CORES * 4) == 1


def test_omp_num_threads_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads_per_process(1) == 3
    stage = Stage("m0", "humpback_trl.scripts.sft", Path("seed.yaml"), [], [])
    assert threads_option(stage.command(LoopArguments(num_processes=2), ROOT / "accelerate_configs/cpu.yaml")) == "3"


@pytest.mark.skipif(CORES < 2, reason="needs at least 2 cores to tell one thread from all")
def test_a_stage_process_runs_with_every_core(monkeypatch, tmp_path):
    """The stage's own `accelerate launch` command, with a script in place of the stage module: torch in the started
    process has one thread per core (it had 1 before, on the 2-core CI machine)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    stage = Stage("m0", "humpback_trl.scripts.sft", Path("seed.yaml"), [], [])
    command = stage.command(LoopArguments(num_processes=1), ROOT / "accelerate_configs/cpu.yaml")
    script, result = tmp_path / "threads.py", tmp_path / "threads.txt"
    script.write_text(f"import torch\nopen({str(result)!r}, 'w').write(str(torch.get_num_threads()))\n")
    launch = command[: command.index("-m")]
    subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", *launch[2:], "--main_process_port", "0", str(script)],
        check=True,
        capture_output=True,
        env={key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"},
    )
    assert result.read_text() == str(CORES)
