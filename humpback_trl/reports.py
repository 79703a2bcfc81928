"""Data-funnel reports: JSON, a Markdown table in the shape of the paper's Table 2, and score histograms (PNG).

A report is a dict: top-level counts (seed pairs, documents, candidates, filters...) and a list of curation
iterations, each with its scoring model, the count per score (bucket k = scores in [k, k + 1)), the unparsed count,
A4, A5, mean lengths, a histogram in bins of 0.25 and the top-scored pairs. Per-score counts, unparsed and the pairs
rejected by the instruction checks always add up to the candidates; a curation iteration also counts the pairs kept
out of A4 / A5 for low digit mass (`low_mass`) or as a segment's second pair (`same_segment`), says how each split
was selected (`selection`: a threshold, or a fraction of the pool) and may hold the judges' calibration on a
labelled dev set (`calibration`). Likelihood-mode scores have no 1-5 scale: their histogram spans the scores seen,
in `LIKELIHOOD_BINS` bins, and no per-score counts are kept. The loop's report
(pipeline.loop_report) adds the corpus funnel, the backward model's output with examples, the preference data's
counts (`preferences`), the evaluation (`evaluation`: the content of `humpback eval`'s report.json) and each stage's
wall time; scores.png draws each histogram with the A4/A5 thresholds. A stage whose model has a thinking template
adds `thinking`: the texts it generated and how many held thinking text (stripped; stage.finish_stage).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset

from humpback_trl.calibration import calibration_markdown
from humpback_trl.stage_outputs import REPORT, REPORT_MARKDOWN

SCORES = (1, 2, 3, 4, 5)


HISTOGRAM_BIN = 0.25  # fine enough to show where the A4 (4) and A5 (4.5) thresholds cut
LIKELIHOOD_BINS = 16
TOP_PAIRS = 3
EXCERPT_CHARS = 300


def number_stats(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "std": 0.0}
    return {"mean": round(statistics.fmean(values), 1), "std": round(statistics.pstdev(values), 1)}


def length_stats(texts: Sequence[str]) -> dict[str, float]:
    return number_stats([len(text) for text in texts])


def score_histogram(scores: Sequence[float | None], width: float = HISTOGRAM_BIN) -> dict[str, list[float]]:
    """Counts of the parsed scores in bins of `width` over [1, 5]; a score of exactly 5 falls in the last bin."""
    bins = round(4 / width)
    counts = [0] * bins
    for value in scores:
        if value is not None:
            counts[min(int((value - 1) / width), bins - 1)] += 1
    return {"edges": [1 + i * width for i in range(bins + 1)], "counts": counts}


def range_histogram(scores: Sequence[float | None], bins: int = LIKELIHOOD_BINS) -> dict[str, list[float]]:
    """Counts of the scores in `bins` equal bins from the lowest to the highest score seen."""
    given = [value for value in scores if value is not None]
    if not given:
        return {"edges": [], "counts": []}
    low, high = min(given), max(given)
    width = (high - low) / bins or 1.0
    counts = [0] * bins
    for value in given:
        counts[min(int((value - low) / width), bins - 1)] += 1
    return {"edges": [low + i * width for i in range(bins + 1)], "counts": counts}


def top_pairs(scored: Dataset, a5: Dataset, n: int = TOP_PAIRS) -> list[dict[str, Any]]:
    """The n best-scored pairs (A5 when A5 has them), with an excerpt of each output, to show what curation keeps;
    `a5` marks membership (a pair above A5's threshold may have lost to a better pair of its segment)."""
    kept = set(zip(a5["instruction"], a5["output"], strict=True))
    scores = scored["score"]
    ranked = sorted((i for i, value in enumerate(scores) if value is not None), key=lambda i: -scores[i])[:n]
    return [
        {
            "score": round(scores[i], 3),
            "a5": (scored[i]["instruction"], scored[i]["output"]) in kept,
            "instruction": scored[i]["instruction"],
            "output": scored[i]["output"][:EXCERPT_CHARS],
        }
        for i in ranked
    ]


def subset_stats(pairs: Dataset) -> dict[str, Any]:
    return {
        "count": len(pairs),
        "instruction_chars": length_stats(pairs["instruction"]),
        "output_chars": length_stats(pairs["output"]),
    }


def curation_summary(
    scored: Dataset,
    a4: Dataset,
    a5: Dataset,
    *,
    iteration: int,
    scorer: str,
    mode: str,
    thresholds: Mapping[str, float],
) -> dict[str, Any]:
    scores = scored["score"]
    checks = scored["check"] if "check" in scored.column_names else [None] * len(scored)
    summary: dict[str, Any] = {
        "iteration": iteration,
        "scorer": scorer,
        "mode": mode,
        # A fraction that kept no pair has no score to show as its threshold.
        "thresholds": {name: (None if value == float("inf") else value) for name, value in thresholds.items()},
        "candidates": len(scored),
    }
    if mode != "likelihood":
        # Bucket k holds scores in [k, k + 1), so A_k (score >= k) is exactly the sum of the buckets from k up, in
        # both rubric modes (logits scores are probability-weighted means, generate scores integers).
        per_score = {str(k): sum(1 for v in scores if v is not None and k <= v < k + 1) for k in SCORES[:-1]}
        per_score["5"] = sum(1 for value in scores if value is not None and value >= 5)
        summary["per_score"] = per_score
    return {
        **summary,
        "unparsed": sum(1 for value, check in zip(scores, checks, strict=True) if value is None and check is None),
        "rejected_by_checks": sum(1 for check in checks if check is not None),
        "a4": len(a4),
        "a5": len(a5),
        "lengths": {"candidates": subset_stats(scored), "A4": subset_stats(a4), "A5": subset_stats(a5)},
        "histogram": range_histogram(scores) if mode == "likelihood" else score_histogram(scores),
        "top_pairs": top_pairs(scored, a5),
    }


def _fmt(stats: Mapping[str, float]) -> str:
    return f"{stats['mean']:.0f} ± {stats['std']:.0f}"


def _cell(text: str, limit: int = 160) -> str:
    """One Markdown table cell: a single line, pipes escaped, long text cut with an ellipsis."""
    flat = " ".join(str(text).split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_cell(value) for value in row) + " |" for row in rows),
    ]


def _rule(it: Mapping[str, Any], split: str) -> str:
    """How a split was selected: "A5 >= 4.5", or "A5 = top 8.3% (k=3, score >= 0.41)"."""
    rule = it.get("selection", {}).get(split)
    if rule is None or rule["rule"] == "threshold":
        return f"{split.upper()} >= {it['thresholds'][split]}"
    reached = "" if rule["min_score"] is None else f", score >= {rule['min_score']:.3g}"
    return f"{split.upper()} = top {rule['fraction']:.1%} of the pool (k={rule['k']}{reached})"


def _count_lines(it: Mapping[str, Any]) -> list[str]:
    if "per_score" in it:
        return _table(
            ["score", *map(str, SCORES), "unparsed", "candidates"],
            [["count", *(it["per_score"][str(s)] for s in SCORES), it["unparsed"], it["candidates"]]],
        )
    edges = it["histogram"]["edges"]
    span = f"scores from {edges[0]:.3g} to {edges[-1]:.3g}" if edges else "no scores"
    # A likelihood pool without IFD has null lp_prior / ifd columns: say why where the scores are described.
    ifd = " lp_prior and ifd not computed (likelihood_ifd: true adds them)." if it.get("ifd") is False else ""
    return [f"{it['candidates'] - it['unparsed'] - it.get('rejected_by_checks', 0)} pairs scored ({span}).{ifd}"]


def _check_lines(it: Mapping[str, Any]) -> list[str]:
    """The instruction checks' funnel and the pairs left out as a segment's second pair."""
    lines = []
    if "checks" in it:
        failed = ", ".join(f"{name} {n}" for name, n in it["checks"].items() if name != "passed") or "none enabled"
        lines.append(
            f"Instruction checks: {it['checks']['passed']} of {it['candidates']} candidates passed "
            f"({it['passed_checks_share']:.0%}); rejected before scoring: {failed}."
            if it["candidates"]
            else "Instruction checks: no candidates."
        )
    if it.get("same_segment"):
        lines.append(f"Kept out of A4 / A5 as a segment's second pair: {it['same_segment']}.")
    return ["", *lines] if lines else []


def _iteration_lines(it: Mapping[str, Any]) -> list[str]:
    lines = [
        "",
        f"## Iteration {it['iteration']}: scored by `{it['scorer']}` ({it['mode']} mode, "
        f"{_rule(it, 'a4')}, {_rule(it, 'a5')})",
        *(
            [f"{it['trains']} trained on {it['training_pairs']} pairs ({it['training_data']})", ""]
            if "trains" in it
            else [""]
        ),
        *_count_lines(it),
        *_check_lines(it),
        *_low_mass_lines(it),
        "",
        *_table(
            ["data", "# examples", "instruction length (chars)", "output length (chars)"],
            [
                [name, stats["count"], _fmt(stats["instruction_chars"]), _fmt(stats["output_chars"])]
                for name, stats in it["lengths"].items()
            ],
        ),
    ]
    if "calibration" in it:
        lines += ["", *calibration_markdown(it["calibration"])]
    if it.get("top_pairs"):
        lines += ["", "Top-scored pairs (A5 marked):", ""]
        lines += _table(
            ["score", "A5", "instruction", "output (start)"],
            [[p["score"], "yes" if p["a5"] else "no", p["instruction"], p["output"]] for p in it["top_pairs"]],
        )
    return lines


def _low_mass_lines(it: Mapping[str, Any]) -> list[str]:
    """The scored pairs A4 / A5 leave out whatever their score: the scorer put too little mass on the digits."""
    if "low_mass" not in it or it["mode"] != "logits":
        return []  # only logits mode reads a digit mass
    floor = it["min_score_mass"]
    rule = f"digit mass < {floor:g}" if floor else "floor off: min_score_mass 0"
    return ["", f"Kept out of A4 / A5 for low digit mass ({rule}): {it['low_mass']} of {it['candidates']} pairs."]


def _evaluation_lines(evaluation: Mapping[str, Any]) -> list[str]:
    # Imported here: evaluation loads peft and bitsandbytes, which only a report holding an evaluation needs.
    from humpback_trl.evaluation import summary_lines

    return ["", "## Evaluation", "", *summary_lines(evaluation)]


def _preference_lines(preferences: Mapping[str, Any]) -> list[str]:
    return ["", "## Preference data", "", *_table(["measure", "value"], list(preferences.items()))]


def _backward_lines(backward: Mapping[str, Any]) -> list[str]:
    chars, words = backward["instruction_chars"], backward["instruction_words"]
    return [
        "",
        "## Backward model output",
        "",
        f"{backward['instructions']} instructions for {backward['segments']} segments "
        f"({backward['questions (end with ?)']} end with a question mark); length {_fmt(chars)} characters, "
        f"{_fmt(words)} words.",
        "",
        *_table(
            ["segment (first line)", "instruction written for it"],
            [[example["segment"], example["instruction"]] for example in backward["examples"]],
        ),
    ]


def _thinking_line(counts: Mapping[str, int]) -> str:
    return (
        f"Thinking text stripped from {counts['stripped']} of {counts['generated']} texts the model generated "
        "(a thinking template, prompted in non-thinking mode)."
    )


def render_markdown(report: Mapping[str, Any], title: str = "Data funnel") -> str:
    lines = [f"# {title}", ""]
    lines += [f"- **{key}**: {value}" for key, value in report.items() if not isinstance(value, (list, dict))]
    if "thinking" in report:
        lines += ["", _thinking_line(report["thinking"])]
    if "corpus_funnel" in report:
        lines += ["", "## Corpus funnel", "", *_table(["step", "count"], list(report["corpus_funnel"].items()))]
    if "backward_model" in report:
        lines += _backward_lines(report["backward_model"])
    for it in report.get("iterations", []):
        lines += _iteration_lines(it)
    if "preferences" in report:
        lines += _preference_lines(report["preferences"])
    if "evaluation" in report:
        lines += _evaluation_lines(report["evaluation"])
    if "stage_seconds" in report:
        seconds = report["stage_seconds"]
        rows = [[name, "-" if value is None else f"{value:.0f}"] for name, value in seconds.items()]
        total = sum(value for value in seconds.values() if value is not None)
        rows.append(["total", f"{total:.0f}"])
        lines += ["", "## Wall time per stage (seconds)", "", *_table(["stage", "seconds"], rows)]
    return "\n".join(lines) + "\n"


def _histogram_bars(axis: Any, it: Mapping[str, Any]) -> None:
    """The fine histogram where the report has one, else the per-score buckets; A4/A5 thresholds as lines."""
    if "histogram" in it:
        edges, counts = it["histogram"]["edges"], it["histogram"]["counts"]
        if counts:
            axis.bar(edges[:-1], counts, width=edges[1] - edges[0], align="edge", color="#4472c4", edgecolor="white")
    else:
        axis.bar([s + 0.5 for s in SCORES[:-1]] + [5.0], [it["per_score"][str(s)] for s in SCORES], width=0.9)
    for name, color in (("a4", "#ed7d31"), ("a5", "#c00000")):
        value = it["thresholds"][name]
        if value is not None:
            axis.axvline(value, color=color, linestyle="--", label=f"{name.upper()} >= {value:.3g} ({it[name]} pairs)")
    if it["mode"] != "likelihood":
        axis.set_xlim(1, 5.25)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7, loc="upper left")


def plot_scores(iterations: Sequence[Mapping[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, max(len(iterations), 1), figsize=(4.5 * max(len(iterations), 1), 3.2), squeeze=False)
    for axis, it in zip(axes[0], iterations, strict=False):
        _histogram_bars(axis, it)
        unparsed = f", {it['unparsed']} unparsed" if it["unparsed"] else ""
        axis.set_title(f"iteration {it['iteration']} ({it['scorer'].split('/')[-1]}{unparsed})", fontsize=9)
        axis.set_xlabel(f"score ({it['mode']} mode)")
        axis.set_ylabel("pairs")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_report(report: Mapping[str, Any], folder: str | Path, title: str = "Data funnel") -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / REPORT, folder / REPORT_MARKDOWN
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(report, title), encoding="utf-8")
    paths = [json_path, md_path]
    if report.get("iterations"):
        paths.append(plot_scores(report["iterations"], folder / "scores.png"))
    return paths
