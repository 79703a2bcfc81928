"""The whole loop on two machines on one box: `humpback run` as machine ranks 0 and 1 on localhost (CPU, gloo, one
process each, one shared output folder). Machine 0 alone takes the lock and writes the stage markers and the loop
report; machine 1 runs its part of every multi-process stage; a rerun of both skips every stage. And the channel
between the machines (humpback_trl/machines.py) refuses machines that plan different loops."""

import gc
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch.distributed as dist
from conftest import ROOT, free_port, kill_tree
from loop_runs import statuses

from humpback_trl.configs import LoopArguments
from humpback_trl.errors import UserError
from humpback_trl.machines import STORE_PORT_OFFSET, Machines

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed gloo unavailable"
)

# The shortest loop that has a single-process stage (corpus), training stages and sharded stages on both machines.
LOOP = ["--iterations", "1", "--evaluate", "false", "--magpie", "none", "--preference", "none"]
STAGES = ["corpus", "myx", "augment", "m0", "curate-1", "m1"]
WAIT_S = 420


def free_port_pair() -> int:
    """A free port whose neighbour is free too: the stages meet at the port, the loop's machines at the next one."""
    while True:
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + STORE_PORT_OFFSET))
            except OSError:
                continue
        return port


def run_machines(recipes: Path, out: Path, name: str) -> tuple[list[int], list[str]]:
    """`humpback run` as machine ranks 0 and 1, as two nodes would start it; (their pids, their outputs)."""
    port = str(free_port_pair())
    machines, logs = [], []
    for rank in (0, 1):
        command = [
            sys.executable, "-m", "humpback_trl.cli", "run", str(recipes), "--output_dir", str(out), *LOOP,
            "--num_processes", "2", "--num_machines", "2", "--machine_rank", str(rank),
            "--main_process_ip", "127.0.0.1", "--main_process_port", port,
        ]  # fmt: skip
        logs.append(out.parent / f"{name}-machine{rank}.log")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(logs[-1], "w") as log:
            machines.append(
                subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True)
            )
    deadline = time.monotonic() + WAIT_S
    try:
        codes = [machine.wait(timeout=max(1, deadline - time.monotonic())) for machine in machines]
    except subprocess.TimeoutExpired:
        codes = None
    outputs = [log.read_text() for log in logs]
    if codes != [0, 0]:
        for machine in machines:
            kill_tree(machine.pid)
        pytest.fail(f"exit codes {codes}:\n" + "\n---\n".join(output[-3000:] for output in outputs))
    return [machine.pid for machine in machines], outputs


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


@pytest.mark.slow
def test_two_machines_run_the_loop_machine_0_writes_markers_and_report_once_a_rerun_skips_all(loop_recipes, tmp_path):
    out = tmp_path / "out"
    pids, outputs = run_machines(loop_recipes, out, "first")
    markers_dir = out / ".stages"
    assert sorted(path.stem for path in markers_dir.glob("*.json")) == sorted(STAGES)
    markers = {name: json.loads((markers_dir / f"{name}.json").read_text()) for name in STAGES}
    assert {name: marker["status"] for name, marker in markers.items()} == dict.fromkeys(STAGES, "done")
    # Every marker is machine 0's: corpus preparation one process on one machine, every other stage across both
    # machines with rank 0 (machine 1's commands carry rank 1).
    for name, marker in markers.items():
        command = shlex.split(marker["command"])
        if name == "corpus":
            assert (option(command, "--num_machines"), option(command, "--num_processes")) == ("1", "1")
            assert "--machine_rank" not in command
        else:
            assert (option(command, "--num_machines"), option(command, "--machine_rank")) == ("2", "0")
    # Only machine 0 took the output folder's lock (the lock file holds its pid).
    assert (out / ".humpback.lock").read_text().strip() == str(pids[0])
    report = json.loads((out / "report.json").read_text())
    assert list(report["stage_seconds"]) == ["models (resolve / convert)", *STAGES]
    assert [part["trains"] for part in report["iterations"]] == ["m1"]
    assert (out / "report.md").is_file()

    first = [statuses(output) for output in outputs]
    assert {name: first[0][name] for name in STAGES} == dict.fromkeys(STAGES, "running")
    # Machine 1 waited for machine 0's corpus preparation and ran its part of every other stage.
    assert {name: first[1][name] for name in STAGES} == {
        "corpus": "run on machine 0 alone",
        **dict.fromkeys(STAGES[1:], "running"),
    }
    assert "--machine_rank 1" in outputs[1] and "--machine_rank 1" not in outputs[0]
    # Both print the loop report machine 0 wrote.
    for output in outputs:
        assert "Humpback data funnel" in output and f"{out / 'report.md'}" in output

    before = {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in markers_dir.iterdir()}
    _, outputs = run_machines(loop_recipes, out, "rerun")
    for output in outputs:
        assert {name: statuses(output)[name] for name in STAGES} == dict.fromkeys(STAGES, "up to date")
        assert "Humpback data funnel" in output
    assert {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in markers_dir.iterdir()} == before


class Stage(SimpleNamespace):
    """What the channel reads of a planned stage."""


M0 = Stage(name="m0", module="humpback_trl.scripts.sft", recipe=Path("seed.yaml"), overrides=["--data", "seed.jsonl"])
CURATE = Stage(name="curate-1", module="humpback_trl.scripts.curate", recipe=Path("curate.yaml"), overrides=[])


def join_both(plans: tuple[list[Stage], list[Stage]]) -> tuple[dict[int, Machines], dict[int, str]]:
    """Machines 0 and 1 join (in threads) with their plans: the channels that joined, and the errors, by rank."""
    port = free_port_pair()
    joined: dict[int, Machines] = {}
    errors: dict[int, str] = {}

    def machine(rank: int) -> None:
        loop = SimpleNamespace(machine_rank=rank, num_machines=2, main_process_ip="127.0.0.1", main_process_port=port)
        try:
            joined[rank] = Machines(loop, plans[rank])
        except UserError as error:
            errors[rank] = str(error)

    threads = [threading.Thread(target=machine, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return joined, errors


def test_machines_that_plan_different_loops_start_nothing():
    """Machine 1 planned one iteration more (another `--iterations`): both stop at once, naming the stage."""
    joined, errors = join_both(([M0], [M0, CURATE]))
    expected = (
        "machine 1 plans another loop than machine 0 (first difference: stage 'curate-1'); every machine runs "
        "`humpback run` with the same recipe folder and options, only --machine_rank differs"
    )
    assert (joined, errors) == ({}, {0: expected, 1: expected})


def test_the_other_machines_stop_at_once_when_machine_0_stops():
    joined, errors = join_both(([M0], [M0]))
    assert (sorted(joined), errors) == ([0, 1], {})
    joined[0].tell("m0", "run")
    assert joined[1].action("m0") == "run"
    address = joined[0].address
    del joined[0]  # machine 0's process ends: the store it serves goes with it
    gc.collect()
    start = time.monotonic()
    with pytest.raises(UserError) as stopped:
        joined[1].action("curate-1")
    assert time.monotonic() - start < 10
    assert str(stopped.value) == (
        f"machine 1: machine 0 stopped before the loop finished ({address}; its output says why); run `humpback run` "
        "again on every machine: finished stages are skipped, an interrupted one resumes"
    )


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (
            {"num_machines": 2, "machine_rank": 2, "main_process_ip": "10.0.0.1"},
            "machine_rank must be 0 .. num_machines-1 and num_machines at least 1, got machine_rank 2 of "
            "num_machines 2",
        ),
        (
            {"num_machines": 2, "machine_rank": 1, "num_processes": 2},
            "num_machines > 1 needs main_process_ip: machine 0's address, the same on every machine",
        ),
        (
            {"num_machines": 2, "num_processes": 3, "main_process_ip": "10.0.0.1"},
            "num_processes 3 does not split over num_machines 2; set it to a multiple of num_machines (the processes "
            "of all machines together)",
        ),
    ],
)
def test_machine_options_are_checked_before_any_machine_joins(options, error):
    with pytest.raises(UserError) as raised:
        LoopArguments(**options)
    assert str(raised.value) == error
