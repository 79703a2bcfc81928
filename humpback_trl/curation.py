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
  `min_score_mass` stays out of A4 / A5 and is counted as `low_mass`: its score is a renormalisation of noise;
- instruction checks before any scoring (`humpback_trl.instruction_checks`): a pair whose instruction is too short,
  too long for its output, a loop, the backward prompt's wording or a copy of its output is not scored, stays in the
  scored pool with its `check` reason and is counted in the funnel;
- `curation_mode: likelihood`: the forward model's likelihood signals (`humpback_trl.likelihood`) instead of the
  rubric, kept as columns of the scored pool; A4 / A5 by fractions of the pool (`a4_fraction`, `a5_fraction`) or
  absolute thresholds, in any mode;
- at most one pair per segment (output) in A4 / A5, the best scored, when a segment has several instructions
  (`instructions_per_segment` in augmentation); the others are counted as `same_segment`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, Features, Value
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from humpback_trl.ablation import ablation_splits
from humpback_trl.calibration import calibration_metrics, load_dev_set, spearman
from humpback_trl.configs import CurationSettings
from humpback_trl.engines import Engine, choose_engine, load_engine
from humpback_trl.generation import SamplingConfig
from humpback_trl.hub import dataset_card
from humpback_trl.instruction_checks import check_counts
from humpback_trl.likelihood import PairLikelihood
from humpback_trl.model_specs import model_arguments
from humpback_trl.modeling import InferenceModelArguments, load_tokenizer
from humpback_trl.pairs import PAIR_FEATURES
from humpback_trl.paths import public_name
from humpback_trl.reports import curation_summary
from humpback_trl.scoring import (
    GENERATE_SAMPLING,
    LIKELIHOOD_FIELDS,
    ScoreResult,
    score_pairs,
)
from humpback_trl.shards import run_sharded
from humpback_trl.stage import StageOutputs, finish_stage
from humpback_trl.stage_outputs import CURATE

logger = logging.getLogger(__name__)

# The scored pool of a panel keeps each judge's own score and digit mass beside the panel's.
JUDGE_FEATURES = [{"judge": Value("string"), "score": Value("float64"), "mass": Value("float64")}]
# The scored pool: the pair schema, the instruction check that rejected a pair (null when it passed) and the
# likelihood features (null outside likelihood mode).
SCORED_FEATURES = Features(
    {**PAIR_FEATURES, "check": Value("string"), **{name: Value("float64") for name in LIKELIHOOD_FIELDS}}
)
PANEL_FEATURES = Features({**SCORED_FEATURES, "judge_scores": JUDGE_FEATURES})
# One scored dev-set row, kept in shards like the pool's so that a rerun (a resumed or a publishing one) reuses it.
DEV_SCORE_FEATURES = Features(
    {
        "dev_row": Value("int64"),
        **{name: PAIR_FEATURES[name] for name in ("score", "score_argmax", "score_mass", "reasoning")},
        **{name: Value("float64") for name in LIKELIHOOD_FIELDS},
    }
)
# What scores: an engine, or a model in memory (the SelfCurationCallback's), scored on the transformers engine.
Scorer = Engine | PreTrainedModel


def nearest_count(fraction: float, pool: int) -> int:
    """`fraction` of `pool` rounded to the nearest count (halves up)."""
    return math.floor(fraction * pool + 0.5)


@dataclass
class Selection:
    """The pool indices each split keeps (in pool order), each split's rule and the score of its last pair, and how
    many eligible pairs lost to a better-scored pair of the same segment."""

    indices: dict[str, list[int]]
    rules: dict[str, dict[str, Any]]
    same_segment: int


def ranked_candidates(
    scores: Sequence[float | None],
    eligible: Sequence[bool],
    segments: Sequence[str] | None,
) -> tuple[list[int], int]:
    """Eligible scored indices, best first (ties in pool order); with `segments`, only each segment's best.
    Returns them and the number left out as another pair of their segment."""
    order = sorted((i for i, s in enumerate(scores) if s is not None and eligible[i]), key=lambda i: -scores[i])
    if segments is None:
        return order, 0
    seen: set[str] = set()
    best = []
    for index in order:
        if segments[index] not in seen:
            seen.add(segments[index])
            best.append(index)
    return best, len(order) - len(best)


def select(
    scores: Sequence[float | None],
    eligible: Sequence[bool],
    rules: dict[str, tuple[str, float]],
    segments: Sequence[str] | None = None,
) -> Selection:
    """A4 / A5: a fraction keeps the exact top-k of the pool (k = fraction x pool size, rounded), a threshold every
    pair scoring at least it; only eligible scored pairs, at most one per segment when `segments` is given."""
    ranked, same_segment = ranked_candidates(scores, eligible, segments)
    indices, described = {}, {}
    for split, (rule, value) in rules.items():
        if rule == "fraction":
            k = nearest_count(value, len(scores))
            chosen = ranked[:k]
            described[split] = {"rule": "fraction", "fraction": value, "k": k}
        else:
            chosen = [i for i in ranked if scores[i] >= value]
            described[split] = {"rule": "threshold", "threshold": value}
        described[split]["min_score"] = min((scores[i] for i in chosen), default=None)
        indices[split] = sorted(chosen)
    return Selection(indices, described, same_segment)


def effective_thresholds(selection: Selection) -> dict[str, float]:
    """The threshold each split applied: its own, or for a fraction the score of its last pair (nothing passes
    when it kept none)."""
    return {
        split: rule["threshold"] if rule["rule"] == "threshold" else (
            rule["min_score"] if rule["min_score"] is not None else math.inf
        )
        for split, rule in selection.rules.items()
    }  # fmt: skip


def subset(pairs: Dataset, indices: list[int]) -> Dataset:
    """The rows at `indices`, as a filter: `select` keeps an indices mapping, and an empty selection so saved does
    not load back."""
    keep = set(indices)
    return pairs.filter(
        lambda _, rows: [row in keep for row in rows], with_indices=True, batched=True, desc="Selecting A4 / A5"
    )


def load_scorer(
    model_args: InferenceModelArguments, settings: CurationSettings
) -> tuple[Engine, PreTrainedTokenizerBase]:
    """The scoring model of `model_args` on the settings' engine, and its tokenizer."""
    return load_engine(model_args, scoring_engine(model_args, settings)), load_tokenizer(model_args)


def scoring_engine(model_args: InferenceModelArguments, settings: CurationSettings) -> str:
    """The engine that scores: `curation_engine`, with `engines.choose_engine`'s rule for likelihood mode with an
    adapter."""
    return choose_engine(
        settings.curation_engine, model_args, settings.curation_mode == "likelihood", "curation_engine"
    )


def score_rows(
    model: Scorer,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    settings: CurationSettings,
    show_progress: bool = False,
) -> list[ScoreResult]:
    """`score_pairs` with the curation settings: the one scoring call of the pool and of the dev set."""
    sampling = SamplingConfig(**{**vars(GENERATE_SAMPLING), "max_new_tokens": settings.curation_max_new_tokens})
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
        likelihood_weights=settings.likelihood_weights,
    )


UNSCORED = ScoreResult(score=None, argmax=None, mass=None, reasoning=None)


def score_checked(
    model: Scorer,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    settings: CurationSettings,
    show_progress: bool = False,
) -> tuple[list[ScoreResult], list[str | None]]:
    """The instruction checks, then `score_rows` on the pairs that passed; a rejected pair gets no score (it ranks
    below every scored pair) and its check's name."""
    checks = settings.checks
    reasons = [checks.reason(instruction, output) for instruction, output in pairs]
    passed = [i for i, reason in enumerate(reasons) if reason is None]
    results = [UNSCORED] * len(pairs)
    scored = score_rows(model, tokenizer, [pairs[i] for i in passed], settings, show_progress) if passed else []
    for index, result in zip(passed, scored, strict=True):
        results[index] = result
    return results, reasons


def scoring_job(settings: CurationSettings) -> dict[str, Any]:
    """What a shard's scores depend on beyond the scorer: a resumed run with other settings starts afresh."""
    job: dict[str, Any] = {"mode": settings.curation_mode, "checks": asdict(settings.checks)}
    if settings.curation_mode == "logits":
        job["prompt"] = settings.curation_prompt
    elif settings.curation_mode == "generate":
        job |= {"prompt": "verbatim", "max_new_tokens": settings.curation_max_new_tokens}
    else:
        job["weights"] = asdict(settings.likelihood_weights)
    return job


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
        pairs = [(row["instruction"], row["output"]) for row in rows]
        results, reasons = score_checked(model, tokenizer, pairs, settings)
        return [
            {**row, **result.as_fields(), **result.likelihood_fields(), "check": reason, "scorer": public_name(scorer),
             "iteration": iteration}
            for row, result, reason in zip(rows, results, reasons, strict=True)
        ]  # fmt: skip

    return run_sharded(
        candidates,
        work,
        work_dir,
        shard_size=settings.curation_shard_size,
        key="source_id",
        desc=f"Curating with {scorer.split('/')[-1]} (iteration {iteration})",
        features=SCORED_FEATURES,
        job={"scorer": scorer, "iteration": iteration, **scoring_job(settings)},
    )


@dataclass
class JudgeRun:
    """One judge's scores: on the pool (in pool order) and on the dev set (None without a dev set)."""

    name: str
    scores: list[float | None]
    masses: list[float | None]
    dev: list[ScoreResult] | None


def dev_set_digest(dev: Dataset) -> str:
    """A short hash of the dev set's pairs: shards scored on another dev set (an edited file) are not reused."""
    pairs = json.dumps([list(dev["instruction"]), list(dev["output"])], ensure_ascii=False)
    return hashlib.sha256(pairs.encode("utf-8")).hexdigest()[:16]


def result_from_row(row: dict[str, Any]) -> ScoreResult:
    """The `ScoreResult` a dev shard row was written from (`as_fields` and `likelihood_fields` read back)."""
    likelihood = None
    if row["lp_cond"] is not None:
        likelihood = PairLikelihood(**{name: row[name] for name in LIKELIHOOD_FIELDS}, score=row["score"])
    return ScoreResult(row["score"], row["score_argmax"], row["score_mass"], row["reasoning"], likelihood)


def score_dev_set(
    model: Scorer,
    tokenizer: PreTrainedTokenizerBase,
    dev: Dataset,
    settings: CurationSettings,
    *,
    scorer: str,
    work_dir: Path,
) -> list[ScoreResult]:
    """`score_checked` on the dev set, shard by shard in `work_dir`: a rerun of a finished stage (to publish it)
    or of a killed one scores only what is missing."""

    def work(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        pairs = [(row["instruction"], row["output"]) for row in rows]
        results = score_checked(model, tokenizer, pairs, settings)[0]
        return [
            {"dev_row": row["dev_row"], **result.as_fields(), **result.likelihood_fields()}
            for row, result in zip(rows, results, strict=True)
        ]

    scored = run_sharded(
        dev.add_column("dev_row", list(range(len(dev)))),
        work,
        work_dir,
        shard_size=settings.curation_shard_size,
        key="dev_row",
        desc=f"Calibrating {scorer.split('/')[-1]} on the dev set",
        features=DEV_SCORE_FEATURES,
        job={"scorer": scorer, "dev_set": dev_set_digest(dev), **scoring_job(settings)},
    )
    return [result_from_row(row) for row in scored]


def judge_run(
    model: Scorer,
    tokenizer: PreTrainedTokenizerBase,
    scored: Dataset,
    dev: Dataset | None,
    settings: CurationSettings,
    name: str,
    dev_dir: Path,
) -> JudgeRun:
    dev_results = None
    if dev is not None:
        dev_results = score_dev_set(model, tokenizer, dev, settings, scorer=name, work_dir=dev_dir)
    return JudgeRun(public_name(name), list(scored["score"]), list(scored["score_mass"]), dev_results)


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
        return judge_run(model, tokenizer, scored, dev, settings, name, work_dir / "calibration")
    finally:
        model.release()


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
    judges: Sequence[JudgeRun],
    dev: Dataset,
    settings: CurationSettings,
    dev_name: str,
    thresholds: dict[str, float],
    side_modes: Sequence[tuple[str, list[ScoreResult], CurationSettings]] = (),
) -> dict[str, Any]:
    """Each judge's (and with several, the panel's) calibration on the dev set at the `thresholds` that selected
    A4 / A5, the scoring model's calibration in each of the `side_modes` (label, dev results, their settings: at the
    thresholds their own rules give on the dev set), and each extra judge's Spearman agreement with M_k on the pool.
    Pairs rejected by the instruction checks have no score: they rank below every scored pair."""
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
    scorers = [dev_metrics(name, scores, masses, labels, kinds, settings, thresholds) for name, scores, masses in runs]
    for label, results, side in side_modes:
        scores, masses = [r.score for r in results], [r.mass for r in results]
        scorers.append(dev_metrics(label, scores, masses, labels, kinds, side, dev_thresholds(scores, masses, side)))
    agreement = {judge.name: spearman(judges[0].scores, judge.scores) for judge in judges[1:]}
    return {"dev_set": dev_name, "scorers": scorers, "agreement": agreement}


def dev_metrics(
    name: str,
    scores: Sequence[float | None],
    masses: Sequence[float | None],
    labels: Sequence[int],
    kinds: Sequence[str],
    settings: CurationSettings,
    thresholds: dict[str, float],
) -> dict[str, Any]:
    metrics = calibration_metrics(
        scores, labels, kinds, thresholds, scorer=name, eligible=[settings.enough_mass(mass) for mass in masses]
    )
    rules = {split: {"rule": rule, "value": value} for split, (rule, value) in settings.rules.items()}
    return {**metrics, "mode": settings.curation_mode, "rules": rules}


def dev_thresholds(
    scores: Sequence[float | None], masses: Sequence[float | None], settings: CurationSettings
) -> dict[str, float]:
    """The thresholds the settings' rules give on a dev set by itself (a fraction: the dev set's own top-k)."""
    eligible = [settings.enough_mass(mass) for mass in masses]
    return effective_thresholds(select(scores, eligible, settings.rules))


def side_mode_settings(settings: CurationSettings, mode: str) -> CurationSettings:
    """The settings of a calibration mode beside the curation mode: the same, with that mode's default rules
    unless the curation's own mode is the same scale (logits and generate share the rubric's)."""
    rubric = {"logits", "generate"}
    same_scale = mode == settings.curation_mode or {mode, settings.curation_mode} <= rubric
    selection = {} if same_scale else dict.fromkeys(
        ("a4_threshold", "a5_threshold", "a4_fraction", "a5_fraction")
    )  # fmt: skip
    return replace(settings, curation_mode=mode, calibration_modes=[], **selection)


def side_mode_runs(
    model: Scorer,
    tokenizer: PreTrainedTokenizerBase,
    dev: Dataset,
    settings: CurationSettings,
    scorer: str,
    work_dir: Path,
) -> list[tuple[str, list[ScoreResult], CurationSettings]]:
    """The scoring model on the dev set in every `calibration_modes` entry other than the curation mode, each
    resumable in `work_dir/<mode>`."""
    runs = []
    for mode in settings.calibration_modes:
        if mode == settings.curation_mode:
            continue
        side = side_mode_settings(settings, mode)
        results = score_dev_set(model, tokenizer, dev, side, scorer=scorer, work_dir=work_dir / mode)
        runs.append((f"{public_name(scorer)} [{mode}]", results, side))
    return runs


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
    """Check and score (with M_k and any extra judges), select A4/A5 and write `output_dir/curated` (splits scored,
    a4, a5), jsonl files and the report, with the calibration block when a dev set is configured; the splits are
    pushed to `hub_repo` (private when `private`)."""
    output_dir = Path(output_dir)
    dev = load_dev_set(settings.calibration_dev_set) if settings.calibration_dev_set else None
    scored = score_candidates(
        model, tokenizer, candidates, settings, iteration=iteration, scorer=scorer, work_dir=output_dir / "scoring"
    )
    judges = [judge_run(model, tokenizer, scored, dev, settings, scorer, output_dir / "calibration")]
    side_modes = []
    if dev is not None:
        side_modes = side_mode_runs(model, tokenizer, dev, settings, scorer, output_dir / "calibration-modes")
    for index, name in enumerate(settings.curation_judges, start=1):
        judges.append(
            score_with_judge(name, candidates, dev, settings, iteration, output_dir / f"scoring-judge-{index}")
        )
    if len(judges) > 1:
        scored = with_panel(scored, judges, settings.curation_panel)
    eligible = [settings.enough_mass(mass) for mass in scored["score_mass"]]
    segments = list(scored["output"]) if settings.one_pair_per_segment else None
    selection = select(list(scored["score"]), eligible, settings.rules, segments)
    thresholds = effective_thresholds(selection)
    curated = DatasetDict(
        scored=scored, a4=subset(scored, selection.indices["a4"]), a5=subset(scored, selection.indices["a5"])
    )
    summary = curation_summary(
        scored,
        curated["a4"],
        curated["a5"],
        iteration=iteration,
        scorer=public_name(scorer),
        mode=settings.curation_mode,
        thresholds=thresholds,
    )
    summary["selection"] = selection.rules
    summary["same_segment"] = selection.same_segment
    summary["checks"] = check_counts(list(scored["check"]), settings.checks)
    summary["passed_checks_share"] = _share(summary["checks"]["passed"], len(scored))
    summary["prompt"] = settings.curation_prompt if settings.curation_mode == "logits" else "verbatim"
    if settings.curation_mode == "likelihood":
        # Whether the lp_prior and ifd columns hold values (`likelihood.LikelihoodWeights.computes_ifd`).
        summary["ifd"] = settings.likelihood_weights.computes_ifd
    summary["min_score_mass"] = settings.mass_floor
    summary["low_mass"] = sum(1 for mass in scored["score_mass"] if not settings.enough_mass(mass))
    if summary["low_mass"] * 2 > len(scored):
        logger.warning(
            "%d of %d pairs were left out of A4/A5 because %s put less than min_score_mass=%s of its probability on "
            "the digits 1-5 after the score cue: it is not answering with a rating. Check the model, or lower "
            "min_score_mass.",
            summary["low_mass"],
            len(scored),
            scorer,
            settings.mass_floor,
        )
    if len(judges) > 1:
        summary["judges"] = [judge.name for judge in judges]
        summary["panel"] = settings.curation_panel
    if dev is not None:
        summary["calibration"] = calibration_block(
            judges, dev, settings, public_name(settings.calibration_dev_set), thresholds, side_modes
        )
    # The ablation's baselines (ablation.py): a random sample of A5's size, and every checked, scored pair.
    baselines = ablation_splits(scored, len(curated["a5"]))
    outputs = StageOutputs(
        report={"candidates": len(candidates), "iterations": [summary]},
        title=f"Curation, iteration {iteration}",
        card=curation_card(summary, hub_repo, private),
        files={
            **{CURATE.split_files[name]: split for name, split in curated.items()},
            CURATE.random: baselines["random"],
            CURATE.passed: baselines["passed"],
        },
        folders={CURATE.curated: curated},
        push=curated,
        hub_repo=hub_repo,
        private=private,
    )
    finish_stage(outputs, output_dir)
    return curated, summary


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def rule_text(rule: dict[str, Any]) -> str:
    """ "top 8.3% (k=3, score >= 0.41)" or "score >= 4.5": how a split was selected."""
    if rule["rule"] == "threshold":
        return f"score >= {rule['threshold']}"
    reached = "" if rule["min_score"] is None else f", score >= {rule['min_score']:.3g}"
    return f"top {rule['fraction']:.1%} (k={rule['k']}{reached})"


def curation_card(summary: dict[str, Any], hub_repo: str | None, private: bool | None = None):
    rules = summary["selection"]
    counts = {
        "candidates": summary["candidates"],
        **{f"instruction check {name}": n for name, n in summary["checks"].items() if name != "passed"},
        "passed the instruction checks": summary["checks"]["passed"],
        "unscored (failed a check, or no parseable score)": summary["unparsed"],
        f"low_mass (digit mass < {summary['min_score_mass']})": summary["low_mass"],
        "same_segment (another pair of the segment scored higher)": summary["same_segment"],
        f"A4 ({rule_text(rules['a4'])})": summary["a4"],
        f"A5 ({rule_text(rules['a5'])})": summary["a5"],
    }
    scorers = " and ".join(f"`{name}`" for name in summary.get("judges", [summary["scorer"]]))
    panel = f" (panel score: the {summary['panel']} of the judges)" if "panel" in summary else ""
    method = (
        f"with its likelihood signals (PMI, end-of-turn{', IFD' if summary.get('ifd') else ''})"
        if summary["mode"] == "likelihood"
        else f"on the paper's 5-point rubric in {summary['mode']} mode ({summary['prompt']} prompt)"
    )
    text = (
        f"Self-curated instruction backtranslation data, iteration {summary['iteration']}: every candidate whose "
        f"instruction passed the checks scored by {scorers}{panel} {method}. "
        "Splits: `scored` (the whole pool with score, the check that rejected a pair, the digit mass or reasoning, "
        "the likelihood features), `a4` and `a5` (the selected subsets, at most one pair per segment, leaving out "
        f"pairs whose digit mass is below {summary['min_score_mass']}; A5 trains the next forward model)."
    )
    if "calibration" in summary:
        judged = curation_scorer(summary["calibration"])
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


def curation_scorer(block: dict[str, Any]) -> dict[str, Any]:
    """The calibration row of the score that selected A4 / A5: the panel's, or the scoring model's in the curation
    mode (the side modes' rows come after them)."""
    return next(row for row in reversed(block["scorers"]) if row["mode"] == block["scorers"][0]["mode"])
