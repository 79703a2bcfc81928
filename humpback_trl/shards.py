"""Crash-safe work split across accelerate processes: long generation and scoring jobs resume where they died.

The items are cut into contiguous shards of `shard_size` rows, numbered globally; shard i belongs to process
i % num_processes. A finished shard is written to a temporary file, fsynced and renamed into place, so a shard file
holds the whole shard or does not exist: a rerun after a crash (even kill -9) redoes only the shards with no file.
The main process then merges the shards in order and checks that every input key appears exactly once.

Processes are those of every machine (accelerate's global process index and count), so a multi-machine launch
splits the shards across all of them; `output_dir` must then be one folder every machine sees (NFS, Lustre...),
which each process checks before any work. A machine that dies leaves its finished shards on disk: a rerun of the
same launch, on the same or another number of machines or processes, redoes only the shards without a file.

Layout under `output_dir`:
    shards/manifest.json        num_items, shard_size, key and a fingerprint of the input keys
    shards/shard-000000.jsonl   the results for items [0, shard_size), one JSON object a line
    data/                       the merged `datasets.Dataset` (save_to_disk)
    data.jsonl                  the merged rows as JSON lines
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import DistributedType, PartialState
from datasets import Dataset, Features, load_from_disk
from tqdm.auto import tqdm

from humpback_trl.errors import MissingColumnError, MissingFileError, UserError

logger = logging.getLogger(__name__)

Row = dict[str, Any]
Items = Dataset | Sequence[Row]
WorkFn = Callable[[list[Row]], list[Row]]

MANIFEST = "manifest.json"
# How long a process waits for a file another process wrote before calling it missing: NFS's default acdirmax.
SHARED_FOLDER_WAIT_S = 60.0


def shard_path(shards_dir: Path, index: int) -> Path:
    return shards_dir / f"shard-{index:06d}.jsonl"


def item_keys(items: Items, key: str) -> list[str]:
    """Every item's key as a string. Duplicates are refused before any work: their results could not be told apart."""
    if not len(items):
        raise UserError("No items to work on")
    columns = items.column_names if isinstance(items, Dataset) else list(items[0])
    if key not in columns:
        raise MissingColumnError(
            f"No key column {key!r}; the items' columns are {columns}. Pass `key=` with the right name."
        )
    keys = [str(k) for k in (items[key] if isinstance(items, Dataset) else (row[key] for row in items))]
    first_row: dict[str, int] = {}
    duplicates = [(k, first_row[k], i) for i, k in enumerate(keys) if first_row.setdefault(k, i) != i]
    if duplicates:
        shown = ", ".join(f"{k!r} (rows {a} and {b})" for k, a, b in duplicates[:5])
        raise UserError(f"{len(duplicates)} duplicate {key!r} value(s) in the items: {shown}. Keys must be unique.")
    return keys


def make_manifest(keys: list[str], shard_size: int, key: str, job: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the shards were written for: the items and, in `job`, the settings that shape results (model, mode,
    sampling...), so that shards of another model or setting are never taken for finished work."""
    digest = hashlib.sha256()
    for k in keys:
        digest.update(k.encode() + b"\0")
    manifest = {"num_items": len(keys), "shard_size": shard_size, "key": key, "keys_sha256": digest.hexdigest()[:16]}
    return {**manifest, "job": normalise_paths(json.loads(json.dumps(job or {}, sort_keys=True, default=str)))}


def normalise_paths(value: Any) -> Any:
    """Every string naming an existing file or folder as its absolute, resolved path: the same adapter given as
    `outputs/m0` or `/home/me/run/outputs/m0` is the same job. Other strings (Hub ids, prompts) are kept."""
    if isinstance(value, dict):
        return {name: normalise_paths(item) for name, item in value.items()}
    if isinstance(value, list):
        return [normalise_paths(item) for item in value]
    # os.path.exists is False, not an error, for a prompt too long or odd to be a path.
    if isinstance(value, str) and value and os.path.exists(value):
        return str(Path(value).resolve())
    return value


def check_manifest(shards_dir: Path, expected: dict[str, Any]) -> None:
    """Refuse shards written for other items or another shard size: resuming from them would mix results."""
    path = shards_dir / MANIFEST
    if not path.is_file():
        return
    found = json.loads(path.read_text(encoding="utf-8"))
    changed = [f"{name} {found.get(name)!r} -> {new!r}" for name, new in expected.items() if found.get(name) != new]
    if changed:
        raise UserError(
            f"{shards_dir} holds shards of a different job ({'; '.join(changed)}). "
            f"Remove {shards_dir} to discard them, or choose another output_dir."
        )


def process_state() -> PartialState:
    """accelerate's state over every process of every machine of the launch.

    On a machine without CUDA, accelerate starts its gloo group only for `PartialState(cpu=True)`: a stage whose first
    call was a plain `PartialState()` (for its log level) holds a one-process state under `accelerate launch
    --num_processes N`, and each of the N processes would do all the work. That state is made again for the CPU."""
    state = PartialState()
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if launched and state.distributed_type == DistributedType.NO and not torch.cuda.is_available():
        PartialState._reset_state()
        state = PartialState(cpu=True)
    return state


def visible(path: Path, wait_s: float) -> bool:
    """Whether the file `path` exists, waiting up to `wait_s` for it: an NFS client caches "no such file" for up to
    a minute (acdirmax), so a file another machine has just written can take that long to appear on this one."""
    deadline = time.monotonic() + wait_s
    while not path.is_file():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)
    return True


def check_shared(shards_dir: Path, process_index: int, wait_s: float = 0.0) -> None:
    """Every process must see the manifest the main process has just written: on a folder that is not shared
    between machines, the work would be lost to the merge hours later."""
    if not visible(shards_dir / MANIFEST, wait_s):
        raise MissingFileError(
            f"{shards_dir / MANIFEST}, written by the main process, is not visible to process {process_index} on "
            f"{socket.gethostname()}: with several machines, output_dir must be one folder that all of them share "
            "(NFS, Lustre...)"
        )


def write_atomic(path: Path, lines: Iterable[str]) -> None:
    """Write then rename, so a reader or a rerun after kill -9 finds the whole file or none of it."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # The folder is fsynced too, so the rename itself survives a power cut and not only a killed process.
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def json_lines(rows: Iterable[Row]) -> Iterable[str]:
    return (json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def read_shard(path: Path) -> list[Row]:
    # Iterating the file splits only at "\n"; str.splitlines() would also split at U+2028 inside a text.
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def key_mismatch(expected: list[str], got: list[str]) -> str:
    """Why the keys `got` are not `expected`, naming the keys; empty when they are equal."""
    if got == expected:
        return ""
    counts, wanted = Counter(got), set(expected)
    problems = {
        "missing": [k for k in expected if k not in counts],
        "duplicated": [k for k, n in counts.items() if n > 1],
        "unexpected": [k for k in counts if k not in wanted],
    }
    text = "; ".join(f"{name} {keys[:5]}" for name, keys in problems.items() if keys)
    if text:
        return text
    position = next(i for i, (a, b) in enumerate(zip(expected, got, strict=True)) if a != b)
    return f"out of order at position {position}: expected {expected[position]!r}, got {got[position]!r}"


def prepare(shards_dir: Path, output_dir: Path, manifest: dict[str, Any], overwrite: bool) -> None:
    """Main process, before any work: clear on overwrite, drop the temporary files of a killed run, record the job."""
    if overwrite:
        shutil.rmtree(shards_dir, ignore_errors=True)
    shards_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*shards_dir.glob("*.tmp-*"), *output_dir.glob("*.tmp-*")]:
        stale.unlink()
    write_atomic(shards_dir / MANIFEST, [json.dumps(manifest, indent=2) + "\n"])


def work_shard(
    items: Items, keys: list[str], bounds: range, index: int, key: str, work_fn: WorkFn, shards_dir: Path
) -> None:
    rows = items.select(bounds).to_list() if isinstance(items, Dataset) else [dict(items[i]) for i in bounds]
    results = work_fn(rows)
    # Checked before writing: a wrong shard on disk would count as finished and survive every rerun.
    problem = key_mismatch(keys[bounds.start : bounds.stop], [str(row.get(key)) for row in results])
    if problem:
        raise ValueError(f"work_fn's results for shard {index} (items {bounds.start}-{bounds.stop - 1}): {problem}")
    write_atomic(shard_path(shards_dir, index), json_lines(results))


def merge(
    shards_dir: Path,
    output_dir: Path,
    keys: list[str],
    shards: list[range],
    key: str,
    features: Features | None,
    wait_s: float = 0.0,
) -> None:
    """Main process: join the shards in index order, each holding exactly its slice of the input keys."""
    rows: list[Row] = []
    for index, bounds in enumerate(shards):
        path = shard_path(shards_dir, index)
        if not visible(path, wait_s):
            raise MissingFileError(
                f"Shard {index} ({path}) is missing after every process finished; with several machines, "
                "output_dir must be one folder that all of them share"
            )
        shard = read_shard(path)
        problem = key_mismatch(keys[bounds.start : bounds.stop], [str(row.get(key)) for row in shard])
        if problem:
            raise ValueError(f"{path} (items {bounds.start}-{bounds.stop - 1}) has wrong {key!r} values: {problem}")
        rows.extend(shard)
    write_atomic(output_dir / "data.jsonl", json_lines(rows))
    shutil.rmtree(output_dir / "data", ignore_errors=True)
    Dataset.from_list(rows, features=features).save_to_disk(str(output_dir / "data"))


def run_sharded(
    items: Items,
    work_fn: WorkFn,
    output_dir: str | Path,
    shard_size: int = 256,
    key: str = "source_id",
    desc: str = "Working",
    show_progress: bool = True,
    overwrite: bool = False,
    features: Features | None = None,
    job: dict[str, Any] | None = None,
) -> Dataset:
    """Run `work_fn` (a shard's rows -> one result row per item, in order, each carrying `key`) over `items` on
    every accelerate process, skipping shards finished by an earlier run; returns the merged results on every
    process. The manifest leaves out the number of processes, so a job may resume on a different number of them."""
    if shard_size < 1:
        raise UserError(f"shard_size must be at least 1, got {shard_size}")
    state = process_state()
    output_dir = Path(output_dir)
    shards_dir = output_dir / "shards"
    keys = item_keys(items, key)
    manifest = make_manifest(keys, shard_size, key, job)
    if not overwrite:
        # Every process checks, so all of them refuse together instead of leaving the others at the barrier.
        check_manifest(shards_dir, manifest)
    if state.is_main_process:
        prepare(shards_dir, output_dir, manifest, overwrite)
    state.wait_for_everyone()
    # Files of other processes may be on another machine, behind a network file system's cache.
    wait_s = SHARED_FOLDER_WAIT_S if state.num_processes > 1 else 0.0
    check_shared(shards_dir, state.process_index, wait_s)

    shards = [range(start, min(start + shard_size, len(keys))) for start in range(0, len(keys), shard_size)]
    mine = range(state.process_index, len(shards), state.num_processes)
    finished = [i for i in mine if shard_path(shards_dir, i).is_file()]
    pending = sum(len(bounds) for i, bounds in enumerate(shards) if not shard_path(shards_dir, i).is_file())
    logger.info(
        "Process %d: %d of its %d shards already finished, skipping them", state.process_index, len(finished), len(mine)
    )
    start = time.perf_counter()
    # This bar is the stage's only one: the bars of datasets' own steps (select, save) are off meanwhile.
    with quiet_datasets():
        # Starting the bar at the finished items keeps its rate and ETA right after a resume.
        with tqdm(
            total=sum(len(shards[i]) for i in mine),
            initial=sum(len(shards[i]) for i in finished),
            desc=desc,
            unit="item",
            position=state.process_index,
            disable=not show_progress,
        ) as bar:
            for index in sorted(set(mine) - set(finished)):
                work_shard(items, keys, shards[index], index, key, work_fn, shards_dir)
                bar.update(len(shards[index]))
        state.wait_for_everyone()

        if state.is_main_process:
            merge(shards_dir, output_dir, keys, shards, key, features, wait_s)
            logger.info(summary_line(desc, len(keys), pending, time.perf_counter() - start))
        state.wait_for_everyone()
        return load_from_disk(str(output_dir / "data"))


def summary_line(desc: str, num_items: int, done: int, seconds: float) -> str:
    """The stage's closing line: items, seconds and the rate of the items worked on in this run."""
    rate = f"{done / seconds:.2f} items/s" if done and seconds > 0 else "nothing left to do"
    return f"{desc}: {num_items} items ({done} in this run, {num_items - done} resumed) in {seconds:.1f} s, {rate}"


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """datasets' progress bars off for the block, back to their previous state after it."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
