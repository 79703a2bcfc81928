"""What each kind of stage writes in its output folder, and which fields of its report the loop report reads.

The module that writes a stage's files takes their names from its declaration here, and the loop (pipeline.py) finds
them through the same declaration: it chains a stage to the files of the stages before it and builds its report from
their reports, naming no file itself. Every planned stage carries its declaration (`pipeline.Stage.outputs`), so a
finished run can be checked against what each stage declares (tests/test_stage_outputs.py). Torch-free: the loop
plans before any stage loads a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from humpback_trl.configs import PREFERENCE_KINDS

REPORT = "report.json"  # reports.write_report's, beside its Markdown rendering
REPORT_MARKDOWN = "report.md"


@dataclass(frozen=True)
class Outputs:
    """A stage kind's declaration: its report (None: it writes none), of which the loop reads `report_fields` (the
    whole report when empty), and, as the `str` fields a subclass adds, the files and save_to_disk folders it writes.
    """

    report: str | None = REPORT
    report_fields: tuple[str, ...] = ()

    def files(self) -> list[str]:
        """Every file and folder the stage writes, its report included."""
        names = [getattr(self, item.name) for item in fields(self) if item.name != "report_fields"]
        return [name for name in names if name is not None]

    def read_report(self, folder: Path) -> dict[str, Any]:
        """The declared fields of the report in `folder` (a field the stage did not write is a KeyError naming it)."""
        if self.report is None:
            raise ValueError(f"{type(self).__name__} declares no report")
        report = json.loads((folder / self.report).read_text(encoding="utf-8"))
        return {key: report[key] for key in self.report_fields} if self.report_fields else report


@dataclass(frozen=True)
class CorpusOutputs(Outputs):
    """corpus (corpus.write_corpus): the segments as a save_to_disk folder (what augment reads) and as JSON lines;
    its report is every filter's count, the loop report's corpus funnel."""

    report: str | None = "corpus_counts.json"
    dataset: str = "dataset"
    segments: str = "segments.jsonl"


@dataclass(frozen=True)
class TrainingOutputs(Outputs):
    """An adapter stage (sft: M_yx, M_k, the ablation's M1-random / M1-all; dpo; kto): the exact training set beside
    the adapter, from which the loop report counts M_k's pairs."""

    report: str | None = None
    training_data: str = "training_data.jsonl"


@dataclass(frozen=True)
class GrpoOutputs(TrainingOutputs):
    """grpo (grpo_training.py): besides the prompt set, its judges and reward and length per step, and their plot."""

    report: str | None = "grpo_report.json"
    plot: str = "reward_length.png"


@dataclass(frozen=True)
class AugmentOutputs(Outputs):
    """augment (augment.py): the candidate pairs the backward model wrote, which every curate stage scores."""

    report_fields: tuple[str, ...] = ("candidates", "segments")
    candidates: str = "candidates.jsonl"


@dataclass(frozen=True)
class MagpieOutputs(Outputs):
    """magpie (magpie.py): the kept conversations as pairs, for the seed or the candidate pool."""

    report_fields: tuple[str, ...] = ("kept",)
    pairs: str = "magpie.jsonl"


@dataclass(frozen=True)
class CurateOutputs(Outputs):
    """curate-k (curation.curate): the scored pool and its A4 and A5 (also as one save_to_disk folder of those three
    splits), and the ablation's baselines (ablation.py). Its report's `iterations` (one: this curation's funnel)
    are the loop report's rows."""

    report_fields: tuple[str, ...] = ("iterations",)
    scored: str = "scored.jsonl"
    a4: str = "a4.jsonl"
    a5: str = "a5.jsonl"
    random: str = "random.jsonl"
    passed: str = "passed.jsonl"
    curated: str = "curated"

    @property
    def split_files(self) -> dict[str, str]:
        """The file of each split of the curated folder, by split name (rewrite's curated_split)."""
        return {"scored": self.scored, "a4": self.a4, "a5": self.a5}


@dataclass(frozen=True)
class RewriteOutputs(Outputs):
    """rewrite-k (rewrite.py): every rewrite with its figures and decision, the pairs that replace the input, and the
    accepted rewrites alone."""

    rewrites: str = "rewrites.jsonl"
    rewritten: str = "rewritten.jsonl"
    accepted: str = "accepted.jsonl"


@dataclass(frozen=True)
class PreferenceOutputs(Outputs):
    """preferences of one kind (preferences.py): its rows as JSON lines and as a save_to_disk folder."""

    data: str = "dpo.jsonl"
    folder: str = "dpo"


@dataclass(frozen=True)
class EvalOutputs(Outputs):
    """eval (evaluation.py): the comparison, rendered as Markdown too, and every judgment."""

    markdown: str = REPORT_MARKDOWN
    judgments: str = "judgments.jsonl"


CORPUS = CorpusOutputs()
TRAINING = TrainingOutputs()
GRPO = GrpoOutputs()
AUGMENT = AugmentOutputs()
MAGPIE = MagpieOutputs()
CURATE = CurateOutputs()
REWRITE = RewriteOutputs()
PREFERENCES = {kind: PreferenceOutputs(data=f"{kind}.jsonl", folder=kind) for kind in PREFERENCE_KINDS}
EVAL = EvalOutputs()
