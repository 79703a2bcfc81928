"""Sharded, resumable work: every key exactly once, finished shards skipped after kill -9, changed jobs refused."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch.distributed as dist  # noqa: E402
from conftest import launch_cpu_processes  # noqa: E402
from datasets import Dataset, load_from_disk  # noqa: E402

from humpback_trl.shards import check_shared, run_sharded, visible  # noqa: E402

WAIT_S = 30

# Run as a script: shards of 4 documents, each taking a moment, logging the first key of every shard it starts.
JOB = """
import sys, time
from datasets import Dataset
from humpback_trl.shards import run_sharded

out, log, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])

def work(rows):
    with open(log, "a") as f:
        f.write(rows[0]["source_id"] + "\\n")
    time.sleep(delay)
    return [{"source_id": row["source_id"], "length": len(row["text"])} for row in rows]

items = Dataset.from_list([{"source_id": f"doc-{i:03d}", "text": "x" * i} for i in range(40)])
run_sharded(items, work, out, shard_size=4, show_progress=False)
"""

# Run under `accelerate launch` on a CPU: a plain PartialState() first, as the stages ask for their log level, which
# without CUDA is a one-process state until run_sharded makes it the launch's gloo group.
TWO_PROCESSES = """
import os, sys
from accelerate import PartialState
from datasets import Dataset
from humpback_trl.shards import run_sharded

state = PartialState()

def work(rows):
    return [{"source_id": row["source_id"], "process": state.process_index, "pid": os.getpid()} for row in rows]

items = Dataset.from_list([{"source_id": f"doc-{i:03d}"} for i in range(30)])
data = run_sharded(items, work, sys.argv[1], shard_size=4, show_progress=False)
with open(os.path.join(sys.argv[1], f"returned-{state.process_index}"), "w") as f:
    f.write(str(len(data)))
state.destroy_process_group()
"""


def documents(n: int, prefix: str = "doc") -> Dataset:
    return Dataset.from_list([{"source_id": f"{prefix}-{i:03d}", "text": f"document {i}"} for i in range(n)])


class Recorder:
    """A work function that writes one instruction per document and records the first key of each shard."""

    def __init__(self):
        self.calls = []

    def __call__(self, rows):
        self.calls.append(rows[0]["source_id"])
        # U+2028 is a line break to str.splitlines(), not to JSON lines: the shards must survive it.
        return [{"source_id": row["source_id"], "instruction": f"Sum up {row['text']}\u2028now."} for row in rows]


def shard_files(output_dir: Path) -> list[str]:
    return sorted(path.name for path in (output_dir / "shards").glob("shard-*.jsonl"))


def test_every_key_once_in_order_and_a_rerun_does_no_work(tmp_path):
    items = documents(10)
    work = Recorder()
    data = run_sharded(items, work, tmp_path, shard_size=4, show_progress=False)
    assert list(data["source_id"]) == list(items["source_id"])
    assert data[3]["instruction"] == "Sum up document 3\u2028now."
    assert work.calls == ["doc-000", "doc-004", "doc-008"]
    assert shard_files(tmp_path) == ["shard-000000.jsonl", "shard-000001.jsonl", "shard-000002.jsonl"]
    lines = (tmp_path / "data.jsonl").read_text(encoding="utf-8").split("\n")[:-1]
    assert [json.loads(line) for line in lines] == data.to_list()

    again = Recorder()
    # The same items as a list of dicts are the same job.
    assert run_sharded(items.to_list(), again, tmp_path, shard_size=4, show_progress=False).to_list() == data.to_list()
    assert again.calls == []


def test_a_rerun_after_kill_9_redoes_only_unfinished_shards(tmp_path):
    script, out, log = tmp_path / "job.py", tmp_path / "out", tmp_path / "calls.log"
    script.write_text(JOB)
    with open(tmp_path / "job.err", "w") as err:
        job = subprocess.Popen([sys.executable, str(script), str(out), str(log), "0.3"], stderr=err)
    deadline = time.monotonic() + WAIT_S
    while len(shard_files(out)) < 2:
        if job.poll() is not None or time.monotonic() > deadline:
            job.kill()
            pytest.fail(f"the job did not finish 2 shards in {WAIT_S} s: {(tmp_path / 'job.err').read_text()[-2000:]}")
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=WAIT_S)
    finished = shard_files(out)
    assert 2 <= len(finished) < 10
    # What a kill in the middle of a write leaves behind.
    (out / "shards" / "shard-000009.jsonl.tmp-4242").write_text('{"source_id": "doc-0')

    rerun = subprocess.run(
        [sys.executable, str(script), str(out), str(log), "0"], capture_output=True, text=True, timeout=WAIT_S
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    calls = Counter(log.read_text().split())
    first_keys = {f"shard-{i:06d}.jsonl": f"doc-{4 * i:03d}" for i in range(10)}
    assert all(calls[first_keys[name]] == 1 for name in finished)
    assert set(calls) == set(first_keys.values()) and set(calls.values()) <= {1, 2}
    assert sum(n == 2 for n in calls.values()) <= 1  # at most the shard in flight at the kill was redone
    data = load_from_disk(str(out / "data"))
    assert list(data["source_id"]) == [f"doc-{i:03d}" for i in range(40)]
    assert data[7]["length"] == 7
    assert not list(out.rglob("*.tmp-*"))


@pytest.mark.parametrize(
    ("items", "shard_size", "changed"),
    [(documents(10, "other"), 4, "keys_sha256"), (documents(10), 5, "shard_size"), (documents(11), 4, "num_items")],
)
def test_a_changed_job_is_refused_until_overwrite(tmp_path, items, shard_size, changed):
    run_sharded(documents(10), Recorder(), tmp_path, shard_size=4, show_progress=False)
    work = Recorder()
    advice = "Remove .*shards to discard them, or choose another output_dir"
    with pytest.raises(ValueError, match=rf"different job \({changed} .*{advice}"):
        run_sharded(items, work, tmp_path, shard_size=shard_size, show_progress=False)
    assert work.calls == []

    data = run_sharded(items, work, tmp_path, shard_size=shard_size, overwrite=True, show_progress=False)
    assert list(data["source_id"]) == list(items["source_id"])
    assert len(work.calls) == len(shard_files(tmp_path)) == -(-len(items) // shard_size)


def test_shards_of_another_model_or_setting_are_refused(tmp_path):
    run_sharded(documents(10), Recorder(), tmp_path, shard_size=4, show_progress=False, job={"model": "a"})
    work = Recorder()
    with pytest.raises(ValueError, match=r"different job \(job \{'model': 'a'\} -> \{'model': 'b'\}"):
        run_sharded(documents(10), work, tmp_path, shard_size=4, show_progress=False, job={"model": "b"})
    assert work.calls == []
    run_sharded(documents(10), work, tmp_path, shard_size=4, show_progress=False, job={"model": "a"})
    assert work.calls == []


def test_the_same_adapter_as_a_relative_or_absolute_path_is_the_same_job(tmp_path, monkeypatch):
    adapter = tmp_path / "runs" / "m0"
    adapter.mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "runs")
    out = tmp_path / "out"
    run_sharded(documents(10), Recorder(), out, shard_size=4, show_progress=False, job={"adapter": "m0"})
    work = Recorder()
    data = run_sharded(documents(10), work, out, shard_size=4, show_progress=False, job={"adapter": str(adapter)})
    assert work.calls == [] and len(data) == 10
    # A Hub id or a prompt is no path: kept as written, and another value is still another job.
    with pytest.raises(ValueError, match="different job"):
        run_sharded(documents(10), work, out, shard_size=4, show_progress=False, job={"adapter": "org/m0"})


def test_one_summary_line_per_stage_with_items_seconds_and_rate(tmp_path, caplog):
    with caplog.at_level("INFO", logger="humpback_trl.shards"):
        run_sharded(documents(10), Recorder(), tmp_path, shard_size=4, show_progress=False, desc="Scoring")
        run_sharded(documents(10), Recorder(), tmp_path, shard_size=4, show_progress=False, desc="Scoring")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Scoring: ")]
    assert len(lines) == 2
    assert lines[0].startswith("Scoring: 10 items (10 in this run, 0 resumed) in ") and lines[0].endswith(" items/s")
    assert lines[1].startswith("Scoring: 10 items (0 in this run, 10 resumed) in ")
    assert lines[1].endswith("nothing left to do")


def test_duplicate_or_missing_keys_are_refused_before_any_work(tmp_path):
    def work(rows):
        pytest.fail("work_fn ran")

    items = [{"segment_id": "a"}, {"segment_id": "b"}, {"segment_id": "a"}]
    with pytest.raises(ValueError, match=r"'a' \(rows 0 and 2\)"):
        run_sharded(items, work, tmp_path, key="segment_id", show_progress=False)
    with pytest.raises(KeyError, match="No key column 'source_id'.*segment_id"):
        run_sharded(items, work, tmp_path, show_progress=False)
    assert not (tmp_path / "shards").exists()


def test_wrong_results_are_never_kept_or_merged(tmp_path):
    with pytest.raises(ValueError, match=r"shard 0 .*missing \['doc-003'\]"):
        run_sharded(documents(8), lambda rows: rows[:-1], tmp_path, shard_size=4, show_progress=False)
    assert shard_files(tmp_path) == []

    run_sharded(documents(8), Recorder(), tmp_path, shard_size=4, show_progress=False)
    shard = tmp_path / "shards" / "shard-000001.jsonl"
    shard.write_text(shard.read_text(encoding="utf-8").replace("doc-004", "doc-000"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"shard-000001\.jsonl .*missing \['doc-004'\]; unexpected \['doc-000'\]"):
        run_sharded(documents(8), Recorder(), tmp_path, shard_size=4, show_progress=False)


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed gloo unavailable")
def test_two_cpu_processes_alternate_shards_and_merge_once(tmp_path):
    script, out = tmp_path / "two.py", tmp_path / "out"
    script.write_text(TWO_PROCESSES)
    launch = launch_cpu_processes(str(script), str(out), timeout=120)
    assert launch.returncode == 0, launch.stderr[-3000:]

    data = load_from_disk(str(out / "data"))
    assert list(data["source_id"]) == [f"doc-{i:03d}" for i in range(30)]
    assert [row["process"] for row in data] == [(i // 4) % 2 for i in range(30)]
    assert len(set(data["pid"])) == 2
    assert [(out / f"returned-{rank}").read_text() for rank in (0, 1)] == ["30", "30"]


def test_a_process_that_cannot_see_the_main_processs_manifest_stops_before_any_work(tmp_path):
    # What a machine whose output_dir is not the shared folder finds: no manifest where the main process wrote one.
    with pytest.raises(FileNotFoundError, match=r"not visible to process 3 on .*must be one folder that all of them"):
        check_shared(tmp_path / "shards", 3)
    run_sharded(documents(4), Recorder(), tmp_path, shard_size=2, show_progress=False)
    check_shared(tmp_path / "shards", 3)


def test_a_file_written_elsewhere_is_waited_for_before_it_counts_as_missing(tmp_path):
    # A network file system can show another machine's new file only after its cache expires.
    late = tmp_path / "shard-000007.jsonl"
    timer = threading.Timer(0.6, late.write_text, args=("{}\n",))
    timer.start()
    try:
        assert not visible(late, 0.0)
        assert visible(late, 10.0)
    finally:
        timer.cancel()
    start = time.monotonic()
    assert not visible(tmp_path / "never.jsonl", 1.0) and time.monotonic() - start >= 1.0
