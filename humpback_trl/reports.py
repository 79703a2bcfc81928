"""Data-funnel reports: JSON, a Markdown table in the shape of the paper's Table 2, and score histograms (PNG).

A report is a dict: top-level counts (seed pairs, documents, candidates, filters...) and a list of curation
iterations, each with its scoring model, the count per score (bucket k = scores in [k, k + 1)), the unparsed count,
A4, A5 and mean lengths. Per-score counts plus unparsed always add up to the candidates scored.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset

SCORES = (1, 2, 3, 4, 5)


def length_stats(texts: Sequence[str]) -> dict[str, float]:
    lengths = [len(text) for text in texts]
    if not lengths:
        return {"mean": 0.0, "std": 0.0}
    return {"mean": round(statistics.fmean(lengths), 1), "std": round(statistics.pstdev(lengths), 1)}


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
    # Bucket k holds scores in [k, k + 1), so A_k (score >= k) is exactly the sum of the buckets from k up, in both
    # modes (logits scores are probability-weighted means, generate scores integers).
    scores = scored["score"]
    per_score = {str(k): sum(1 for value in scores if value is not None and k <= value < k + 1) for k in SCORES[:-1]}
    per_score["5"] = sum(1 for value in scores if value is not None and value >= 5)
    return {
        "iteration": iteration,
        "scorer": scorer,
        "mode": mode,
        "thresholds": dict(thresholds),
        "candidates": len(scored),
        "per_score": per_score,
        "unparsed": sum(1 for value in scores if value is None),
        "a4": len(a4),
        "a5": len(a5),
        "lengths": {"candidates": subset_stats(scored), "A4": subset_stats(a4), "A5": subset_stats(a5)},
    }


def _fmt(stats: Mapping[str, float]) -> str:
    return f"{stats['mean']:.0f} ± {stats['std']:.0f}"


def render_markdown(report: Mapping[str, Any], title: str = "Data funnel") -> str:
    lines = [f"# {title}", ""]
    lines += [f"- **{key}**: {value}" for key, value in report.items() if not isinstance(value, (list, dict))]
    for it in report.get("iterations", []):
        lines += [
            "",
            f"## Iteration {it['iteration']}: scored by `{it['scorer']}` ({it['mode']} mode, "
            f"A4 >= {it['thresholds']['a4']}, A5 >= {it['thresholds']['a5']})",
            *([f"{it['trains']} trained on {it['training_pairs']} pairs (seed + A5)", ""] if "trains" in it else [""]),
            "| score | " + " | ".join(map(str, SCORES)) + " | unparsed | candidates |",
            "|---|" + "---|" * (len(SCORES) + 2),
            "| count | "
            + " | ".join(str(it["per_score"][str(s)]) for s in SCORES)
            + f" | {it['unparsed']} | {it['candidates']} |",
            "",
            "| data | # examples | instruction length (chars) | output length (chars) |",
            "|---|---|---|---|",
        ]
        for name, stats in it["lengths"].items():
            lines.append(
                f"| {name} | {stats['count']} | {_fmt(stats['instruction_chars'])} | {_fmt(stats['output_chars'])} |"
            )
    return "\n".join(lines) + "\n"


def plot_scores(iterations: Sequence[Mapping[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [*map(str, SCORES), "unparsed"]
    figure, axes = plt.subplots(1, max(len(iterations), 1), figsize=(4 * max(len(iterations), 1), 3), squeeze=False)
    for axis, it in zip(axes[0], iterations, strict=False):
        axis.bar(labels, [it["per_score"][str(s)] for s in SCORES] + [it["unparsed"]], color="#4472c4")
        axis.set_title(f"iteration {it['iteration']} ({it['scorer'].split('/')[-1]})", fontsize=9)
        axis.set_xlabel("score")
        axis.set_ylabel("pairs")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_report(report: Mapping[str, Any], folder: str | Path, title: str = "Data funnel") -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "report.json", folder / "report.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(report, title), encoding="utf-8")
    paths = [json_path, md_path]
    if report.get("iterations"):
        paths.append(plot_scores(report["iterations"], folder / "scores.png"))
    return paths
