"""Self-curation of a candidate pool (Li et al. 2024, section 2.2): the current forward model scores every
(instruction, output) candidate with the rubric, and the pairs scoring at least a threshold form A4 and A5.

One engine serves `humpback curate` and the SelfCurationCallback: scoring runs shard by shard across the
accelerate processes (resumable), the main process writes the scored pool, A4, A5, the funnel report and a card.

Beyond the paper, because a model that grades its own data trusts its own style (self-agreement bias):
- a second opinion: `curation_judges` score the same pool with the same rubric and mode; the pair's score is the
  panel's mean (or min) and every judge's own score stays in the scored pool (`judge_scores`);
- a calibration block: every judge and the panel also score a labelled dev set (`calibration_dev_set`), and the
  report gives their ROC AUC and A4 / A5 precision / recall, with each judge's Spearman agreement with M_k;
- in logits mode a pair whose digit mass (the probability the model put on "1".."5" at all) is below
  `min_score_mass` stays out of A4 / A5 and is counted as `low_mass`: its score is a renormalisation of noise.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, Features, Value
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from humpback_trl import vllm_engine
from humpback_trl.calibration import BUNDLED_DEV_SET, calibration_metrics, load_dev_set, spearman
from humpback_trl.generation import SamplingConfig, check_engine, resolve_engine
from humpback_trl.hub import dataset_card
from humpback_trl.model_specs import model_arguments, release_memory
from humpback_trl.modeling import InferenceModelArguments, load_model, load_tokenizer
from humpback_trl.pairs import PAIR_FEATURES
from humpback_trl.reports import curation_summary
from humpback_trl.scoring import (
    A4_THRESHOLD,
    DEFAULT_THRESHOLDS,
    GENERATE_SAMPLING,
    MODES,
    PROMPT_STYLES,
    ScoreResult,
    score_pairs,
)
from humpback_trl.shards import run_sharded
from humpback_trl.stage import StageOutputs, finish_stage

logger = logging.getLogger(__name__)

CURATED_FOLDER = "curated"
PANELS = ("mean", "min")
# The scored pool of a panel keeps each judge's own score and digit mass beside the panel's.
JUDGE_FEATURES = [{"judge": Value("string"), "score": Value("float64"), "mass": Value("float64")}]
PANEL_FEATURES = Features({**PAIR_FEATURES, "judge_scores": JUDGE_FEATURES})
OFF = ("", "none", "null")
# What scores: a transformers model in memory, or a model served by vLLM.
Scorer = PreTrainedModel | vllm_engine.VllmModel


@dataclass
class CurationSettings:
    curation_mode: str = field(
        default="logits",
        metadata={
            "help": "logits (one forward pass, probability-weighted score) or generate (the paper's reasoning "
            "+ Score: N)."
        },
    )
    curation_engine: str = field(
        default="auto",
        metadata={
            "help": "auto (vllm where installed, else transformers) | transformers | vllm: what "
            "`humpback curate` and MAGPIE's curation score with (the SelfCurationCallback scores with the model in "
            "memory)."
        },
    )
    curation_batch_size: int = field(default=8, metadata={"help": "Pairs per forward pass in logits mode."})
    curation_prefix_cache: bool = field(
        default=True, metadata={"help": "Encode the shared rubric prefix once (logits mode)."}
    )
    curation_token_budget: int = field(default=16384, metadata={"help": "Tokens per generation batch (generate mode)."})
    curation_max_new_tokens: int = field(default=256, metadata={"help": "Reasoning length (generate mode)."})
    a4_threshold: float = field(
        default=A4_THRESHOLD, metadata={"help": "A4 threshold: pairs scoring at least this (4)."}
    )
    a5_threshold: float | None = field(
        default=None, metadata={"help": "A5 threshold; default 4.5 in logits mode, 5 in generate mode (the paper's)."}
    )
    curation_shard_size: int = field(default=256, metadata={"help": "Pairs per resumable shard."})
    # Default verbatim (the paper's text): measured with SmolLM2-135M-Instruct on builtin:dev (logits mode), ROC AUC
    # 0.58 verbatim vs 0.48 score-only; REFERENCE.md section 6 found the opposite (0.71 vs 0.81) on another 100-pair
    # set. Both near chance for a 135M judge: rerun `humpback calibrate --prompt_styles verbatim score-only` per model.
    curation_prompt: str = field(
        default="verbatim",
        metadata={
            "help": "verbatim (the paper's rubric) | score-only (without its 'reason first, then write Score:' "
            "sentence, which logits mode contradicts). Logits mode only; generate mode always uses verbatim."
        },
    )
    min_score_mass: float = field(
        default=0.5,
        metadata={
            "help": "Logits mode: pairs where the model puts less probability than this on the digits 1-5 stay out "
            "of A4/A5 (counted as low_mass); 0 turns the floor off."
        },
    )
    curation_judges: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Extra scoring models beside M_k (adapter folders, model folders or Hub ids), same rubric and "
            "mode: a second opinion against self-agreement."
        },
    )
    curation_panel: str = field(
        default="mean", metadata={"help": "How the judges' scores combine into the pair's score: mean | min."}
    )
    # On by default: it is the curation's only check from outside the pool, and 100 pairs per judge cost next to
    # nothing beside a pool of thousands (one forward pass each in logits mode).
    calibration_dev_set: str | None = field(
        default=BUNDLED_DEV_SET,
        metadata={
            "help": "Labelled dev set (instruction, output, label[, kind]) every judge also scores, for the "
            "calibration block of the report: builtin:dev, a file or a Hub id; none to skip."
        },
    )

    def __post_init__(self) -> None:
        if self.curation_mode not in MODES:
            raise ValueError(f"curation_mode must be one of {MODES}, got {self.curation_mode!r}")
        check_engine(self.curation_engine, "curation_engine")
        if self.curation_prompt not in PROMPT_STYLES:
            raise ValueError(f"curation_prompt must be one of {PROMPT_STYLES}, got {self.curation_prompt!r}")
        if self.curation_panel not in PANELS:
            raise ValueError(f"curation_panel must be one of {PANELS}, got {self.curation_panel!r}")
        if not 0 <= self.min_score_mass <= 1:
            raise ValueError(f"min_score_mass must be within [0, 1], got {self.min_score_mass}")
        if isinstance(self.curation_judges, str):
            self.curation_judges = [self.curation_judges]
        if self.calibration_dev_set is not None and self.calibration_dev_set.strip().lower() in OFF:
            self.calibration_dev_set = None
        if self.a5_threshold is None:
            self.a5_threshold = float(DEFAULT_THRESHOLDS[self.curation_mode])

    @property
    def thresholds(self) -> dict[str, float]:
        return {"a4": self.a4_threshold, "a5": self.a5_threshold}

    @property
    def mass_floor(self) -> float:
        """The digit-mass floor in force: generate mode records no mass."""
        return self.min_score_mass if self.curation_mode == "logits" else 0.0

    def enough_mass(self, mass: float | None) -> bool:
        return mass is None or mass >= self.mass_floor


def at_least(pairs: Dataset, threshold: float, min_mass: float = 0.0) -> Dataset:
    """Pairs scoring at least `threshold` whose digit mass (where recorded) is at least `min_mass`."""
    return pairs.filter(
        lambda scores, masses: [
            s is not None and s >= threshold and (m is None or m >= min_mass)
            for s, m in zip(scores, masses, strict=True)
        ],
        input_columns=["score", "score_mass"],
        batched=True,
        desc=f"Selecting score >= {threshold}" + (f", digit mass >= {min_mass}" if min_mass else ""),
    )


def load_scorer(
    model_args: InferenceModelArguments, settings: CurationSettings
) -> tuple[Scorer, PreTrainedTokenizerBase]:
    """The scoring model of `model_args` on the settings' engine, and its tokenizer."""
    if resolve_engine(settings.curation_engine) == "vllm":
        return vllm_engine.from_arguments(model_args), load_tokenizer(model_args)
    return load_model(model_args)


def score_rows(
    model: Scorer,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    settings: CurationSettings,
    show_progress: bool = False,
) -> list[ScoreResult]:
    """`score_pairs` (or its vLLM twin) with the curation settings: the one scoring call of the pool and of the
    dev set."""
    sampling = SamplingConfig(**{**vars(GENERATE_SAMPLING), "max_new_tokens": settings.curation_max_new_tokens})
    if isinstance(model, vllm_engine.VllmModel):
        if settings.curation_mode == "generate":
            return vllm_engine.score_generate(model, tokenizer, pairs, sampling, show_progress)
        return vllm_engine.score_logits(model, tokenizer, pairs, show_progress, prompt_style=settings.curation_prompt)
    return score_pairs(
        model,
        tokenizer,
        pairs,
        mode=settings.curation_mode,
        batch_size=settings.curation_batch_size,
        prefix_cache=settings.curation_prefix_cache,
        sampling=sampling,
        token_budget=settings.curation_token_budget,
        show_progress=show_progress,
        prompt_style=settings.curation_prompt,
    )


def score_candidates(
    model: Scorer,
    tokenizer: PreTrainedTokenizerBase,
    candidates: Dataset,
    settings: CurationSettings,
    *,
    iteration: int,
    scorer: str,
    work_dir: Path,
) -> Dataset:
    """Score every candidate once, shard by shard; a rerun resumes where a killed run stopped."""

    def work(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results = score_rows(model, tokenizer, [(row["instruction"], row["output"]) for row in rows], settings)
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
            "prompt": settings.curation_prompt if settings.curation_mode == "logits" else "verbatim",
        },
    )


@dataclass
class JudgeRun:
    """One judge's scores: on the pool (in pool order) and on the dev set (None without a dev set)."""

    name: str
    scores: list[float | None]
    masses: list[float | None]
    dev: list[ScoreResult] | None


def judge_run(
    model: Scorer,
    tokenizer: PreTrainedTokenizerBase,
    scored: Dataset,
    dev: Dataset | None,
    settings: CurationSettings,
    name: str,
) -> JudgeRun:
    dev_pairs = list(zip(dev["instruction"], dev["output"], strict=True)) if dev is not None else None
    dev_results = score_rows(model, tokenizer, dev_pairs, settings) if dev_pairs is not None else None
    return JudgeRun(name, list(scored["score"]), list(scored["score_mass"]), dev_results)


def score_with_judge(
    name: str,
    candidates: Dataset,
    dev: Dataset | None,
    settings: CurationSettings,
    iteration: int,
    work_dir: Path,
) -> JudgeRun:
    """Load an extra judge, score the pool (resumable, in its own shard folder) and the dev set, then free it."""
    model, tokenizer = load_scorer(model_arguments(name), settings)
    try:
        scored = score_candidates(
            model, tokenizer, candidates, settings, iteration=iteration, scorer=name, work_dir=work_dir
        )
        return judge_run(model, tokenizer, scored, dev, settings, name)
    finally:
        del model
        release_memory()


def panel_score(scores: Sequence[float | None], panel: str) -> float | None:
    """The mean or min over the judges that gave a score (generate mode may find none); None when none did."""
    given = [score for score in scores if score is not None]
    if not given:
        return None
    return min(given) if panel == "min" else statistics.fmean(given)


def panel_mass(masses: Sequence[float | None]) -> float | None:
    """The lowest digit mass of the panel: each judge must have meant its rating for the panel's to count."""
    given = [mass for mass in masses if mass is not None]
    return min(given) if given else None


def with_panel(scored: Dataset, judges: Sequence[JudgeRun], panel: str) -> Dataset:
    """M_k's scored pool with `score` / `score_mass` replaced by the panel's and every judge's own in
    `judge_scores`; `score_argmax`, `reasoning` and `scorer` stay M_k's."""

    def combine(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        rows = [[(judge.name, judge.scores[i], judge.masses[i]) for judge in judges] for i in indices]
        batch["score"] = [panel_score([score for _, score, _ in row], panel) for row in rows]
        batch["score_mass"] = [panel_mass([mass for _, _, mass in row]) for row in rows]
        batch["judge_scores"] = [[{"judge": n, "score": s, "mass": m} for n, s, m in row] for row in rows]
        return batch

    return scored.map(combine, batched=True, with_indices=True, features=PANEL_FEATURES, desc="Panel scores")


def calibration_block(
    judges: Sequence[JudgeRun], dev: Dataset, settings: CurationSettings, dev_name: str
) -> dict[str, Any]:
    """Each judge's (and with several, the panel's) calibration on the dev set, and each extra judge's Spearman
    agreement with M_k on the pool."""
    labels, kinds = list(dev["label"]), list(dev["kind"])
    runs = [(judge.name, [r.score for r in judge.dev], [r.mass for r in judge.dev]) for judge in judges]
    if len(judges) > 1:
        columns = list(zip(*[[(r.score, r.mass) for r in judge.dev] for judge in judges], strict=True))
        runs.append(
            (
                f"panel ({settings.curation_panel})",
                [panel_score([score for score, _ in row], settings.curation_panel) for row in columns],
                [panel_mass([mass for _, mass in row]) for row in columns],
            )
        )
    scorers = [
        calibration_metrics(
            scores,
            labels,
            kinds,
            settings.thresholds,
            scorer=name,
            eligible=[settings.enough_mass(mass) for mass in masses],
        )
        for name, scores, masses in runs
    ]
    agreement = {judge.name: spearman(judges[0].scores, judge.scores) for judge in judges[1:]}
    return {"dev_set": dev_name, "scorers": scorers, "agreement": agreement}


def curate(
    model: Scorer,
    tokenizer: PreTrainedTokenizerBase,
    candidates: Dataset,
    settings: CurationSettings,
    *,
    iteration: int,
    scorer: str,
    output_dir: str | Path,
    hub_repo: str | None = None,
    private: bool | None = None,
) -> tuple[DatasetDict, dict[str, Any]]:
    """Score (with M_k and any extra judges), select A4/A5 and write `output_dir/curated` (splits scored, a4, a5),
    jsonl files and the report, with the calibration block when a dev set is configured; the splits are pushed to
    `hub_repo` (private when `private`)."""
    output_dir = Path(output_dir)
    dev = load_dev_set(settings.calibration_dev_set) if settings.calibration_dev_set else None
    scored = score_candidates(
        model, tokenizer, candidates, settings, iteration=iteration, scorer=scorer, work_dir=output_dir / "scoring"
    )
    judges = [judge_run(model, tokenizer, scored, dev, settings, scorer)]
    for index, name in enumerate(settings.curation_judges, start=1):
        judges.append(
            score_with_judge(name, candidates, dev, settings, iteration, output_dir / f"scoring-judge-{index}")
        )
    if len(judges) > 1:
        scored = with_panel(scored, judges, settings.curation_panel)
    floor = settings.mass_floor
    curated = DatasetDict(
        scored=scored,
        a4=at_least(scored, settings.a4_threshold, floor),
        a5=at_least(scored, settings.a5_threshold, floor),
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
    summary["prompt"] = settings.curation_prompt if settings.curation_mode == "logits" else "verbatim"
    summary["min_score_mass"] = floor
    summary["low_mass"] = sum(1 for mass in scored["score_mass"] if not settings.enough_mass(mass))
    if summary["low_mass"] * 2 > len(scored):
        logger.warning(
            "%d of %d pairs were left out of A4/A5 because %s put less than min_score_mass=%s of its probability on "
            "the digits 1-5 after the score cue: it is not answering with a rating. Check the model, or lower "
            "min_score_mass.",
            summary["low_mass"],
            len(scored),
            scorer,
            floor,
        )
    if len(judges) > 1:
        summary["judges"] = [judge.name for judge in judges]
        summary["panel"] = settings.curation_panel
    if dev is not None:
        summary["calibration"] = calibration_block(judges, dev, settings, settings.calibration_dev_set)
    outputs = StageOutputs(
        report={"candidates": len(candidates), "iterations": [summary]},
        title=f"Curation, iteration {iteration}",
        card=curation_card(summary, hub_repo, private),
        files=dict(curated),
        folders={CURATED_FOLDER: curated},
        push=curated,
        hub_repo=hub_repo,
        private=private,
    )
    finish_stage(outputs, output_dir)
    return curated, summary


def curation_card(summary: dict[str, Any], hub_repo: str | None, private: bool | None = None):
    counts = {
        "candidates": summary["candidates"],
        **{f"score {score}": n for score, n in summary["per_score"].items()},
        "unparsed": summary["unparsed"],
        f"low_mass (digit mass < {summary['min_score_mass']})": summary["low_mass"],
        f"A4 (score >= {summary['thresholds']['a4']})": summary["a4"],
        f"A5 (score >= {summary['thresholds']['a5']})": summary["a5"],
    }
    scorers = " and ".join(f"`{name}`" for name in summary.get("judges", [summary["scorer"]]))
    panel = f" (panel score: the {summary['panel']} of the judges)" if "panel" in summary else ""
    text = (
        f"Self-curated instruction backtranslation data, iteration {summary['iteration']}: every candidate scored by "
        f"{scorers}{panel} on the paper's 5-point rubric in {summary['mode']} mode ({summary['prompt']} prompt). "
        "Splits: `scored` (the whole pool with score, argmax, probability mass on the digits or the reasoning), "
        "`a4` and `a5` (the subsets at or above the thresholds, leaving out pairs whose digit mass is below "
        f"{summary['min_score_mass']}; A5 trains the next forward model)."
    )
    if "calibration" in summary:
        judged = summary["calibration"]["scorers"][-1]
        text += (
            f" On the labelled dev set `{summary['calibration']['dev_set']}`, `{judged['scorer']}` had ROC AUC "
            f"{judged['auc']} and A5 precision / recall {judged['precision']['a5']} / {judged['recall']['a5']}."
        )
    return dataset_card(
        title=hub_repo or f"curated-iteration-{summary['iteration']}",
        summary=text,
        counts=counts,
        links={"scoring model": summary["scorer"]},
        private=private,
    )
