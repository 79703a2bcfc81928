"""recipes/launch.slurm without a cluster: its shell syntax, and what it starts on each node, run with the
environment Slurm gives a batch job and stand-ins for srun, scontrol, accelerate and humpback on PATH."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from humpback_trl.pipeline import cpu_threads_per_process, plan
from humpback_trl.scripts import run

SCRIPT = ROOT / "recipes" / "launch.slurm"
NODES = ["gpu-node-a", "gpu-node-b"]

# srun: its options, then the command, run once per node (in turn) with the node's SLURM_NODEID, as Slurm would.
SRUN = """#!/bin/bash
nodes=1
while [[ "$1" == --* ]]; do
    case "$1" in --nodes=*) nodes=${1#--nodes=} ;; esac
    shift
done
for ((node = 0; node < nodes; node++)); do
    SLURM_NODEID=$node SLURMD_NODENAME=node$node "$@" || exit $?
done
"""
SCONTROL = """#!/bin/bash
[ "$1 $2 $3" = "show hostnames gpu-node-[a-b]" ] && printf 'gpu-node-a\\ngpu-node-b\\n'
"""
# accelerate: one line per call, the node and the arguments exactly as received.
ACCELERATE = """#!/bin/bash
printf 'node=%s' "${SLURM_NODEID:-none}" >> "$LAUNCH_LOG"
printf ' %q' "$@" >> "$LAUNCH_LOG"
printf '\\n' >> "$LAUNCH_LOG"
"""
# humpback: the dry run is the real one (it checks the recipes and writes nothing); a loop is logged as accelerate is.
HUMPBACK = """#!/bin/bash
for arg in "$@"; do
    [ "$arg" = --dry_run ] && exec python -m humpback_trl.cli "$@"
done
printf 'node=%s' "${SLURM_NODEID:-none}" >> "$LAUNCH_LOG"
printf ' %q' "$@" >> "$LAUNCH_LOG"
printf '\\n' >> "$LAUNCH_LOG"
"""


def test_the_script_is_valid_bash():
    check = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


@pytest.fixture()
def cluster(tmp_path) -> dict[str, str]:
    """The environment of a 2-node batch job, with the stand-ins first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL), ("accelerate", ACCELERATE), ("humpback", HUMPBACK)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "gpu-node-[a-b]",
        "GPUS_PER_NODE": "8",
        "LAUNCH_LOG": str(tmp_path / "launches.log"),
    }


def launches(env: dict[str, str]) -> list[tuple[str, list[str]]]:
    """(node, accelerate's arguments) of every call, in order."""
    lines = Path(env["LAUNCH_LOG"]).read_text().splitlines()
    return [(line.split(" ", 1)[0], shlex.split(line.split(" ", 1)[1])) for line in lines]


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_one_stage_runs_on_every_node_with_its_rank(cluster, tmp_path):
    recipe = tmp_path / "my recipes" / "augment.yaml"
    result = subprocess.run(
        ["bash", str(SCRIPT), "augment", "--config", str(recipe), "--output_dir", "out/aug", "--seed", "7"],
        env=cluster, capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "job 4242: 2 nodes x 8 GPUs = 16 processes, main process on gpu-node-a:29742" in result.stdout
    calls = launches(cluster)
    assert [node for node, _ in calls] == ["node=0", "node=1"]
    for rank, (_, args) in enumerate(calls):
        assert args[:9] == [
            "launch", "--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip", "gpu-node-a",
            "--main_process_port", "29742",
        ]  # fmt: skip
        # The stage's arguments pass through untouched, the space in the recipe's path included.
        assert args[9:] == [
            "--num_processes", "16", "--config_file", "accelerate_configs/multi_gpu.yaml",
            "-m", "humpback_trl.scripts.augment", "--config", str(recipe), "--output_dir", "out/aug", "--seed", "7",
        ]  # fmt: skip


def test_outside_an_allocation_or_without_a_stage_it_says_how_to_run(cluster, tmp_path):
    usage = subprocess.run(["bash", str(SCRIPT)], env=cluster, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage: sbatch --nodes=N recipes/launch.slurm STAGE" in usage.stderr
    outside = {key: value for key, value in cluster.items() if key != "SLURM_NNODES"}
    result = subprocess.run(["bash", str(SCRIPT), "augment"], env=outside, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "runs inside a Slurm allocation" in result.stderr
    assert not Path(cluster["LAUNCH_LOG"]).exists()


def test_the_whole_loop_is_humpback_run_on_every_node_with_its_rank(cluster, tmp_path):
    folder = ROOT / "recipes" / "llama-3.1-8b"
    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", str(SCRIPT), "run", str(folder / "loop_multi_gpu.yaml"), "--output_dir", str(out)],
        env=cluster, capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # The dry run printed machine 0's plan; then one `humpback run` per node, the allocation's machines appended.
    assert "[humpback] dry run: " in result.stdout and "stages parse and their inputs resolve" in result.stdout
    calls = launches(cluster)
    assert [node for node, _ in calls] == ["node=0", "node=1"]
    for rank, (_, args) in enumerate(calls):
        assert args == [
            "run", str(folder / "loop_multi_gpu.yaml"), "--output_dir", str(out), "--num_processes", "16",
            "--num_machines", "2", "--main_process_ip", "gpu-node-a", "--main_process_port", "29742",
            "--machine_rank", str(rank),
        ]  # fmt: skip
        # What that `humpback run` launches on its node: corpus preparation as one process on machine 0 alone, every
        # other stage across both machines with this node's rank.
        (loop,) = run.make_parser().parse_args_and_config(["--config", args[1], *args[2:]])
        stages = plan(folder, loop)
        assert [stage.name for stage in stages][:3] == ["corpus", "myx", "augment"]
        config = folder.parent.parent / "accelerate_configs" / "multi_gpu.yaml"
        for stage in stages:
            command = stage.command(loop, config)
            if stage.name == "corpus":
                assert (option(command, "--num_machines"), option(command, "--num_processes")) == ("1", "1")
                assert "--machine_rank" not in command
                continue
            assert (option(command, "--num_machines"), option(command, "--num_processes")) == ("2", "16")
            assert option(command, "--machine_rank") == str(rank)
            assert (option(command, "--main_process_ip"), option(command, "--main_process_port")) == (
                "gpu-node-a", "29742",
            )  # fmt: skip
            # Threads for the 8 processes each node starts, not for all 16.
            assert option(command, "--num_cpu_threads_per_process") == str(cpu_threads_per_process(8))
    assert not out.exists()


def test_a_loop_that_does_not_check_out_starts_nothing(cluster, tmp_path):
    broken = tmp_path / "recipes"
    subprocess.run(["cp", "-r", str(ROOT / "recipes" / "quickstart"), str(broken)], check=True)
    with open(broken / "augment.yaml", "a", encoding="utf-8") as recipe:
        recipe.write("temprature: 0.7\n")
    result = subprocess.run(
        ["bash", str(SCRIPT), "run", str(broken), "--output_dir", str(tmp_path / "out")],
        env=cluster, capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert "dry run: 1 problem(s), the first: augment:" in result.stderr
    assert not Path(cluster["LAUNCH_LOG"]).exists()
