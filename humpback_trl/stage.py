"""The one skeleton of every generating or scoring stage (augment, curate, MAGPIE):

    load -> resumable shards (`shards.run_sharded`, on every process) -> `finish_stage`: the main process writes the
    data files, the report and the card, and pushes to the Hub -> every process waits at the barrier.

Only the main process writes, so N accelerate processes never race on a file; the barrier keeps the others from
exiting (and tearing the process group down) while it still works.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import PartialState
from datasets import Dataset, DatasetDict
from huggingface_hub import DatasetCard

from humpback_trl.hub import push_dataset
from humpback_trl.reports import write_report


@dataclass
class StageOutputs:
    """What a stage leaves in its output folder: `files` as `<name>.jsonl`, `folders` as `save_to_disk` folders,
    the report (report.json / .md / scores.png) and the card (README.md); `push` goes to `hub_repo` with the card."""

    report: Mapping[str, Any]
    title: str
    card: DatasetCard
    files: Mapping[str, Dataset] = field(default_factory=dict)
    folders: Mapping[str, Dataset | DatasetDict] = field(default_factory=dict)
    push: Dataset | DatasetDict | None = None
    hub_repo: str | None = None
    private: bool | None = None


def write_outputs(outputs: StageOutputs, output_dir: str | Path) -> None:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, data in outputs.folders.items():
        data.save_to_disk(str(output_dir / name))
    for name, data in outputs.files.items():
        data.to_json(str(output_dir / f"{name}.jsonl"), lines=True, force_ascii=False)
    write_report(outputs.report, output_dir, outputs.title)
    outputs.card.save(str(output_dir / "README.md"))
    if outputs.hub_repo and outputs.push is not None:
        push_dataset(outputs.push, outputs.card, outputs.hub_repo, private=outputs.private)


def finish_stage(outputs: StageOutputs, output_dir: str | Path) -> None:
    """Write (and push) on the main process, then wait for every process."""
    state = PartialState()
    if state.is_main_process:
        write_outputs(outputs, output_dir)
    state.wait_for_everyone()
