"""Self-curation of a candidate pool (Li et al. 2024, section 2.2): the current forward model scores every
(instruction, output) candidate with the rubric, and the pairs scoring at least a threshold form A4 and A5.

One engine serves `humpback curate` and the SelfCurationCallback: scoring runs shard by shard across the
accelerate processes (resumable), the main process writes the scored pool, A4, A5, the funnel report and a card.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from humpback_trl.generation import SamplingConfig
from humpback_trl.hub import dataset_card
from humpback_trl.pairs import PAIR_FEATURES
from humpback_trl.reports import curation_summary
from humpback_trl.scoring import A4_THRESHOLD, DEFAULT_THRESHOLDS, GENERATE_SAMPLING, MODES, score_pairs
from humpback_trl.shards import run_sharded
from humpback_trl.stage import StageOutputs, finish_stage

CURATED_FOLDER = "curated"


@dataclass
class CurationSettings:
    curation_mode: str = field(
        default="logits",
        metadata={
            "help": "logits (one forward pass, probability-weighted score) or generate (the paper's reasoning "
            "+ Score: N)."
        },
    )
    curation_batch_size: int = field(default=8, metadata={"help": "Pairs per forward pass in logits mode."})
    curation_prefix_cache: bool = field(
        default=True, metadata={"help": "Encode the shared rubric prefix once (logits mode)."}
    )
    curation_token_budget: int = field(default=16384, metadata={"help": "Tokens per generation batch (generate mode)."})
    curation_max_new_tokens: int = field(default=256, metadata={"help": "Reasoning length (generate mode)."})
    a4_threshold: float = A4_THRESHOLD
    a5_threshold: float | None = field(
        default=None, metadata={"help": "A5 threshold; default 4.5 in logits mode, 5 in generate mode (the paper's)."}
    )
    curation_shard_size: int = field(default=256, metadata={"help": "Pairs per resumable shard."})

    def __post_init__(self) -> None:
        if self.curation_mode not in MODES:
            raise ValueError(f"curation_mode must be one of {MODES}, got {self.curation_mode!r}")
        if self.a5_threshold is None:
            self.a5_threshold = float(DEFAULT_THRESHOLDS[self.curation_mode])

    @property
    def thresholds(self) -> dict[str, float]:
        return {"a4": self.a4_threshold, "a5": self.a5_threshold}


def at_least(pairs: Dataset, threshold: float) -> Dataset:
    return pairs.filter(
        lambda scores: [s is not None and s >= threshold for s in scores],
        input_columns="score",
        batched=True,
        desc=f"Selecting score >= {threshold}",
    )


def score_candidates(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    candidates: Dataset,
    settings: CurationSettings,
    *,
    iteration: int,
    scorer: str,
    work_dir: Path,
) -> Dataset:
    """Score every candidate once, shard by shard; a rerun resumes where a killed run stopped."""
    sampling = SamplingConfig(**{**vars(GENERATE_SAMPLING), "max_new_tokens": settings.curation_max_new_tokens})

    def work(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results = score_pairs(
            model,
            tokenizer,
            [(row["instruction"], row["output"]) for row in rows],
            mode=settings.curation_mode,
            batch_size=settings.curation_batch_size,
            prefix_cache=settings.curation_prefix_cache,
            sampling=sampling,
            token_budget=settings.curation_token_budget,
            show_progress=False,
        )
        return [
            {**row, **result.as_fields(), "scorer": scorer, "iteration": iteration}
            for row, result in zip(rows, results, strict=True)
        ]

    return run_sharded(
        candidates,
        work,
        work_dir,
        shard_size=settings.curation_shard_size,
        key="source_id",
        desc=f"Curating with {scorer.split('/')[-1]} (iteration {iteration})",
        features=PAIR_FEATURES,
        job={
            "scorer": scorer,
            "iteration": iteration,
            "mode": settings.curation_mode,
            "max_new_tokens": settings.curation_max_new_tokens,
        },
    )


def curate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    candidates: Dataset,
    settings: CurationSettings,
    *,
    iteration: int,
    scorer: str,
    output_dir: str | Path,
    hub_repo: str | None = None,
) -> tuple[DatasetDict, dict[str, Any]]:
    """Score, select A4/A5 and write `output_dir/curated` (splits scored, a4, a5), jsonl files and the report."""
    output_dir = Path(output_dir)
    scored = score_candidates(
        model, tokenizer, candidates, settings, iteration=iteration, scorer=scorer, work_dir=output_dir / "scoring"
    )
    curated = DatasetDict(
        scored=scored, a4=at_least(scored, settings.a4_threshold), a5=at_least(scored, settings.a5_threshold)
    )
    summary = curation_summary(
        scored,
        curated["a4"],
        curated["a5"],
        iteration=iteration,
        scorer=scorer,
        mode=settings.curation_mode,
        thresholds=settings.thresholds,
    )
    outputs = StageOutputs(
        report={"candidates": len(candidates), "iterations": [summary]},
        title=f"Curation, iteration {iteration}",
        card=curation_card(summary, hub_repo),
        files=dict(curated),
        folders={CURATED_FOLDER: curated},
        push=curated,
        hub_repo=hub_repo,
    )
    finish_stage(outputs, output_dir)
    return curated, summary


def curation_card(summary: dict[str, Any], hub_repo: str | None):
    counts = {
        "candidates": summary["candidates"],
        **{f"score {score}": n for score, n in summary["per_score"].items()},
        "unparsed": summary["unparsed"],
        f"A4 (score >= {summary['thresholds']['a4']})": summary["a4"],
        f"A5 (score >= {summary['thresholds']['a5']})": summary["a5"],
    }
    text = (
        f"Self-curated instruction backtranslation data, iteration {summary['iteration']}: every candidate scored by "
        f"`{summary['scorer']}` on the paper's 5-point rubric in {summary['mode']} mode. Splits: `scored` (the whole "
        "pool with score, argmax, probability mass on the digits or the reasoning), `a4` and `a5` (the subsets at "
        "or above the thresholds; A5 trains the next forward model)."
    )
    return dataset_card(
        title=hub_repo or f"curated-iteration-{summary['iteration']}",
        summary=text,
        counts=counts,
        links={"scoring model": summary["scorer"]},
    )
