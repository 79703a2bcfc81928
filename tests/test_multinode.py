"""Two machines on one box: augment and curate launched as machine ranks 0 and 1 on localhost (CPU, gloo, one
process each, one shared output folder). Every shard is written exactly once, and after kill -9 of one machine
mid-stage a rerun of both loses nothing and redoes nothing that was finished.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist
from conftest import ROOT, free_port, kill_tree

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed gloo unavailable"
)

SEGMENTS = 16
SHARD_SIZE = 2
SHARDS = SEGMENTS // SHARD_SIZE
WAIT_S = 150

# The stage's own entry point, with each shard slowed down (so a kill lands mid-stage) and logged once it is on disk.
DRIVER = """
import os, sys, time
from humpback_trl import shards

real_work_shard = shards.work_shard

def logged(items, keys, bounds, index, *rest):
    time.sleep(float(os.environ["SHARD_DELAY_S"]))
    real_work_shard(items, keys, bounds, index, *rest)
    with open(os.environ["SHARD_LOG"], "a") as log:
        log.write(f"{index} {os.environ['RANK']}\\n")

shards.work_shard = logged
from humpback_trl.cli import run_command
run_command(sys.argv[1], sys.argv[2:])
"""


def launch_machines(
    driver: Path, args: list[str], log: Path, delays: tuple[float, float], folder: Path
) -> list[subprocess.Popen]:
    """Machine ranks 0 and 1, each `accelerate launch` with one process, the way two nodes would start; machine
    rank r sleeps delays[r] seconds before each of its shards."""
    port = str(free_port())
    machines = []
    for rank, delay in enumerate(delays):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "SHARD_LOG": str(log), "SHARD_DELAY_S": str(delay)}
        command = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(ROOT / "accelerate_configs/cpu.yaml"),
            "--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
            "--main_process_port", port, "--num_processes", "2", str(driver), *args,
        ]  # fmt: skip
        with open(folder / f"{log.stem}-rank{rank}.err", "w") as err:
            machines.append(subprocess.Popen(command, stdout=err, stderr=err, start_new_session=True, env=env))
    return machines


def stderr_of(log: Path) -> str:
    return "\n".join((log.parent / f"{log.stem}-rank{r}.err").read_text()[-2500:] for r in (0, 1))


def written(log: Path) -> list[tuple[int, int]]:
    """(shard index, global rank) of every shard written, in the order they were written."""
    lines = log.read_text().split() if log.is_file() else []
    return [(int(lines[i]), int(lines[i + 1])) for i in range(0, len(lines), 2)]


def wait_all(machines: list[subprocess.Popen], log: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    for machine in machines:
        try:
            machine.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for m in machines:
                kill_tree(m.pid)
            pytest.fail(f"the machines did not finish in {WAIT_S} s:\n{stderr_of(log)}")


def kill_machine_mid_stage(machines: list[subprocess.Popen], rank: int, log: Path) -> None:
    """kill -9 machine `rank` (launcher and worker) once it has written a shard; the other machine then fails at
    its next collective (gloo sees the peer gone) or is stopped too, as a scheduler ends a job that lost a node."""
    deadline = time.monotonic() + WAIT_S
    while not any(r == rank for _, r in written(log)):
        if time.monotonic() > deadline or any(m.poll() is not None for m in machines):
            for m in machines:
                kill_tree(m.pid)
            pytest.fail(f"machine {rank} wrote no shard:\n{stderr_of(log)}")
        time.sleep(0.05)
    kill_tree(machines[rank].pid)
    other = machines[1 - rank]
    try:
        other.wait(timeout=60)
    except subprocess.TimeoutExpired:
        kill_tree(other.pid)
    assert other.wait() != 0, "the surviving machine cannot finish a stage without the dead one"


def shard_files(stage_dir: Path) -> set[int]:
    # Under the stage's folder: curate keeps its shards in scoring/.
    return {int(path.stem.split("-")[1]) for path in stage_dir.rglob("shards/shard-*.jsonl")}


def run_killed_then_rerun(tmp_path: Path, name: str, args: list[str], shards: int, killed_rank: int) -> None:
    """Run the stage on two machines, kill one mid-stage, rerun both, and check every shard is written once."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    stage_dir = tmp_path / name
    first, second = tmp_path / f"{name}-first.log", tmp_path / f"{name}-rerun.log"
    # Only the machine to be killed is slowed down, so the kill lands before its last shard; the other one need not
    # wait, it finishes its shards and then waits for the dead one, as it would on a real cluster.
    delays = (1.0, 0.0) if killed_rank == 0 else (0.0, 1.0)
    kill_machine_mid_stage(launch_machines(driver, args, first, delays, tmp_path), killed_rank, first)
    finished = shard_files(stage_dir)
    assert {index for index, _ in written(first)} <= finished
    assert 0 < len(finished) < shards, f"the kill did not land mid-stage: {sorted(finished)}"
    assert not list(stage_dir.rglob("data.jsonl")), "no merge without every machine"

    machines = launch_machines(driver, args, second, (0.0, 0.0), tmp_path)
    wait_all(machines, second)
    assert [m.returncode for m in machines] == [0, 0], stderr_of(second)
    redone = written(second)
    indices = [index for index, _ in redone]
    # Nothing finished is redone, nothing is lost, and every shard is written once by the process it belongs to.
    assert sorted([*finished, *indices]) == list(range(shards))
    assert all(rank == index % 2 for index, rank in redone)
    assert shard_files(stage_dir) == set(range(shards))
    assert not list(stage_dir.rglob("*.tmp-*"))


def test_two_machines_augment_and_curate_each_item_once_across_a_killed_machine(tmp_path, tiny_model_dir):
    corpus = tmp_path / "segments.jsonl"
    segments = [{"segment_id": f"seg-{i:02d}", "text": f"Tide table {i} is read from the left."} for i in range(16)]
    corpus.write_text("".join(json.dumps(row) + "\n" for row in segments))
    augment_args = [
        "augment", "--corpus", str(corpus), "--model_name_or_path", str(tiny_model_dir),
        "--output_dir", str(tmp_path / "augment"), "--engine", "transformers", "--max_new_tokens", "8",
        "--shard_size", str(SHARD_SIZE), "--seed", "3",
    ]  # fmt: skip
    run_killed_then_rerun(tmp_path, "augment", augment_args, SHARDS, killed_rank=1)
    generated = [json.loads(line) for line in (tmp_path / "augment" / "data.jsonl").read_text().splitlines()]
    assert [row["source_id"] for row in generated] == [row["segment_id"] for row in segments]
    assert [row["output"] for row in generated] == [row["text"] for row in segments]

    # Curate the pool it wrote (the segments with a non-empty instruction), this time losing the main machine.
    candidates = tmp_path / "augment" / "candidates.jsonl"
    pool = [json.loads(line)["source_id"] for line in candidates.read_text().splitlines()]
    assert len(pool) >= 4, "too few non-empty instructions for a kill mid-stage"
    curate_args = [
        "curate", "--candidates", str(candidates), "--model_name_or_path", str(tiny_model_dir),
        "--output_dir", str(tmp_path / "curate"), "--curation_shard_size", "1", "--min_score_mass", "0",
        "--calibration_dev_set", "none", "--a4_threshold", "2.5", "--a5_threshold", "3",
    ]  # fmt: skip
    run_killed_then_rerun(tmp_path, "curate", curate_args, len(pool), killed_rank=0)
    scored = [json.loads(line) for line in (tmp_path / "curate" / "scored.jsonl").read_text().splitlines()]
    assert [row["source_id"] for row in scored] == pool
