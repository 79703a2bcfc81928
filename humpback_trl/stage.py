"""The one skeleton of every generating or scoring stage (augment, curate, MAGPIE):

    load -> resumable shards (`shards.run_sharded`, on every process) -> `finish_stage`: the main process writes the
    data files, the report and the card, and pushes to the Hub -> every process waits at the barrier.

Only the main process writes, so N accelerate processes never race on a file; the barrier keeps the others from
exiting (and tearing the process group down) while it still works. The report also counts, over all processes, the
texts a model of a thinking template generated for the stage in this run (a resumed run's earlier shards are not
generated again) and those it still wrote thinking text into (`thinking`, stripped: chat_template.strip_generated).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from accelerate import PartialState
from accelerate.utils import gather_object
from datasets import Dataset, DatasetDict
from huggingface_hub import DatasetCard

from humpback_trl.chat_template import take_thinking_counts
from humpback_trl.hub import push_dataset
from humpback_trl.reports import write_report


@dataclass
class StageOutputs:
    """What a stage leaves in its output folder: `files` as JSON lines and `folders` as `save_to_disk` folders, each
    under the name its stage declares (stage_outputs.py), the report (report.json / .md / scores.png) and the card
    (README.md); `push` goes to `hub_repo` with the card."""

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
        data.to_json(str(output_dir / name), lines=True, force_ascii=False)
    write_report(outputs.report, output_dir, outputs.title)
    outputs.card.save(str(output_dir / "README.md"))
    if outputs.hub_repo and outputs.push is not None:
        push_dataset(outputs.push, outputs.card, outputs.hub_repo, private=outputs.private)


def thinking_counts() -> dict[str, int] | None:
    """Every process's `take_thinking_counts` summed (None when no process generated with a thinking template)."""
    counts = [part for part in gather_object([take_thinking_counts()]) if part is not None]
    if not counts:
        return None
    return {key: sum(part[key] for part in counts) for key in counts[0]}


def finish_stage(outputs: StageOutputs, output_dir: str | Path) -> None:
    """Write (and push) on the main process, then wait for every process."""
    thinking = thinking_counts()  # on every process: gathering is collective
    if thinking is not None:
        outputs = replace(outputs, report={**outputs.report, "thinking": thinking})
    state = PartialState()
    if state.is_main_process:
        write_outputs(outputs, output_dir)
    state.wait_for_everyone()
