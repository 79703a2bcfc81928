"""The data-quality ablation (the paper's quality-over-quantity claim, Li et al. 2024, section 4.3): does curation
beat training on the same number of random candidates, or on every candidate?

Every curate stage writes beside A5 the training sets of the baselines, drawn from the same scored pool:
- `random.jsonl`: a uniform random sample of A5's size (seed `ABLATION_SEED`) from the candidates that passed the
  instruction checks and got a score: the pool A5 was selected from. The sample ignores which pairs are in A5, so
  none is forced in or out;
- `passed.jsonl`: every candidate that passed the checks and got a score.
With `ablation: random | all` in loop.yaml, M1-random (or M1-all) trains on the seed plus that set with M1's recipe
(so M1-random takes M1's number of steps), and the eval stage compares it with M1 and M0.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from datasets import Dataset

from humpback_trl.stage_outputs import CURATE

ABLATIONS = ("none", "random", "all")
ABLATION_SEED = 0
# The curate stage's file each ablation trains on.
ABLATION_FILES = {"random": CURATE.random, "all": CURATE.passed}
BASELINE_NAMES = {"random": "random selection", "all": "training on every candidate"}


def passed_indices(scores: Sequence[float | None], checks: Sequence[str | None] | None = None) -> list[int]:
    """Rows that passed the instruction checks (`check` is null) and got a score."""
    checks = checks if checks is not None else [None] * len(scores)
    return [i for i, (score, check) in enumerate(zip(scores, checks, strict=True)) if score is not None and not check]


def random_sample(candidates: Sequence[int], size: int, seed: int = ABLATION_SEED) -> list[int]:
    """`size` of `candidates` drawn uniformly without replacement, in pool order."""
    if size > len(candidates):
        raise ValueError(f"A random sample of {size} needs at least {size} candidates, got {len(candidates)}")
    return sorted(random.Random(seed).sample(list(candidates), size))


def ablation_splits(scored: Dataset, a5_size: int, seed: int = ABLATION_SEED) -> dict[str, Dataset]:
    """The baselines' training sets from a scored pool: `random` (A5's size) and `passed`."""
    checks = list(scored["check"]) if "check" in scored.column_names else None
    passed = passed_indices(list(scored["score"]), checks)
    return {"random": scored.select(random_sample(passed, a5_size, seed)), "passed": scored.select(passed)}


def ablation_verdict(evaluation: Mapping[str, Any], curated: str, baseline: str, kind: str) -> dict[str, Any]:
    """Whether `curated` beat `baseline` under the evaluation's headline judge: its mean preference over the
    baseline with the bootstrap 95% interval, and a one-line verdict (undecided when the judge is)."""
    method = evaluation["headline_method"]
    result = evaluation["methods"][method]
    pair = next(p for p in result["pairs"] if {p["model_a"], p["model_b"]} == {curated, baseline})
    flip = pair["model_a"] != curated
    preference = 1 - pair["preference"] if flip else pair["preference"]
    low, high = (1 - pair["ci_high"], 1 - pair["ci_low"]) if flip else (pair["ci_low"], pair["ci_high"])
    calibration = result["calibration"]
    figures = (
        f"{curated} preferred over {baseline} {preference:.2f} (95% CI {low:.2f}-{high:.2f}, {pair['n']} "
        f"instructions; judge `{evaluation['judge']}` {method}, accuracy {calibration['pairwise_accuracy']:.2f})"
    )
    name = BASELINE_NAMES[kind]
    if calibration["undecided"]:
        line = f"Undecided whether curation beat {name}: the judge is at chance on the labelled pairs. {figures}"
    elif low > 0.5:
        line = f"Curation beat {name}: {figures}"
    elif high < 0.5:
        line = f"Curation lost to {name}: {figures}"
    else:
        line = f"Curation did not beat {name} (the interval holds 0.5): {figures}"
    return {
        "kind": kind,
        "curated": curated,
        "baseline": baseline,
        "method": method,
        "preference": round(preference, 4),
        "ci_low": round(low, 4),
        "ci_high": round(high, 4),
        "judge_accuracy": calibration["pairwise_accuracy"],
        "line": line,
    }
