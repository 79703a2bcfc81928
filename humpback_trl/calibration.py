"""Judge calibration: does a scorer's rubric score tell a good answer from a bad one?

A dev set holds labelled rows `{instruction, output, label, kind}` (label 1 = a good answer, 0 = not; `kind` names
the corruption, "good" for the good rows). The metrics read like the paper's curation table (Li et al. 2024,
Table 4: precision / recall of the A5 filter, M0 0.44 / 0.09, M1 0.52 / 0.44, GPT-4 0.88 / 0.92) plus the ROC AUC
of the raw score, overall and per corruption kind (good rows against that kind's rows only).

Dev sets:
- the bundled one (`builtin:dev`), built by `dev_set_from_pairs` from pairs written for it
  (`humpback_trl/data/dev_pairs.jsonl`, none of them seed pairs): four output-side corruptions of each, one
  instruction-side corruption of each (in turn: a generic or meta instruction, a looping phrase, an echo of the
  output's first sentence, another pair's instruction), and real candidates (`humpback_trl/data/dev_real.jsonl`,
  kind `real`): instructions that backward adapters of two training lengths on SmolLM2-135M-Instruct wrote for the
  bundled corpus's segments, each labelled by reading (1: an on-topic instruction for its segment, else 0);
- `oasst_dev_set`: from an oasst1 message export, each first-turn prompt's rank-0 reply (1) against its
  lowest-ranked reply (0), so a real run calibrates against human labels.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from datasets import Dataset, Features, Value

from humpback_trl.configs import BUNDLED_DEV_SET
from humpback_trl.errors import MissingColumnError, UserError
from humpback_trl.oasst import OASST1_HUB_ID, index_export, usable
from humpback_trl.pairs import builtin_path, load_table

logger = logging.getLogger(__name__)

GOOD = "good"
CORRUPTIONS = ("mismatched", "truncated", "blog", "navigation")
INSTRUCTION_CORRUPTIONS = ("generic", "loop", "echo", "other_instruction")
REAL = "real"
# What a backward model writes when it has not learnt the task (the demo's 10-step adapter wrote these or their like).
GENERIC_INSTRUCTIONS = (
    "Provide a more specific answer.",
    "What is the most likely question or instruction that the text can answer?",
    "Please go ahead and provide the question or instruction that requires more information.",
    "I'm ready to help with your request. How can I assist you today?",
    "Tell me more about this.",
)
LOOP_WORDS = 4
LOOP_TIMES = 4
OASST_KIND = "oasst_low_rank"
DEV_FEATURES = Features(
    {
        "instruction": Value("string"),
        "output": Value("string"),
        "label": Value("int32"),
        "kind": Value("string"),
        "pair_id": Value("string"),
    }
)
# Share of a good answer a truncated corruption keeps: enough to look on topic, clearly missing its end.
TRUNCATE_AT = 0.4
# Web page furniture around an answer (rubric score 1: "promotional text, navigation text"); one per pair, in turn.
PAGE_FURNITURE = (
    (
        "Home › Guides › {topic}\nSkip to content | Menu | Search\n\n",
        "\n\nShare this: Facebook · Twitter · Pinterest · Email\nSubscribe to our newsletter and get 15% off your "
        "first order! Related posts: 10 tips you need to know | Our top picks for 2024",
    ),
    (
        "Posted in {topic} | 4 comments | Last updated 3 days ago\nAdvertisement\n\n",
        "\n\nSponsored: Try our premium plan free for 30 days. Cancel anytime.\n« Previous post | Next post »\n"
        "About us · Contact · Privacy policy · Cookie settings",
    ),
    (
        "MENU ≡ | Log in | Sign up\nYou are here: Home / {topic}\n\n",
        "\n\nDid you find this article helpful? Yes / No\nBuy now on Amazon - limited time deal!\n"
        "© 2024 All rights reserved. Follow us on Instagram and YouTube.",
    ),
)


def truncate(text: str, share: float = TRUNCATE_AT) -> str:
    """The text cut at the last space before `share` of its length: a sentence stops mid-way."""
    cut = text.rfind(" ", 0, max(1, int(len(text) * share)))
    return text[: cut if cut > 0 else max(1, int(len(text) * share))]


def first_sentence(text: str) -> str:
    """The text up to its first sentence end or line break."""
    line = text.strip().split("\n", 1)[0]
    end = line.find(". ")
    return line[: end + 1] if end >= 0 else line


def corrupt_instruction(kind: str, pair: Mapping[str, str], index: int, pairs: Sequence[Mapping[str, str]]) -> str:
    """An instruction-side corruption of `pair` (its output stays): what an undertrained backward model writes."""
    if kind == "generic":
        return GENERIC_INSTRUCTIONS[index // len(INSTRUCTION_CORRUPTIONS) % len(GENERIC_INSTRUCTIONS)]
    if kind == "loop":
        opening = " ".join(pair["instruction"].split()[:LOOP_WORDS])
        return " ".join([opening] * LOOP_TIMES) + " " + pair["instruction"]
    if kind == "echo":
        return first_sentence(pair["output"])
    # A quarter of the set away: never the pair whose answer its "mismatched" row borrows (half the set away).
    return pairs[(index + len(pairs) // 4) % len(pairs)]["instruction"]


def dev_rows(pair: Mapping[str, str], index: int, pairs: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
    """The good row of `pair`, its four output-side corruptions: another pair's answer (half the set away, so never
    its own or a neighbour's), its first 40%, its blog-voice rewrite (written by hand in `blog_output`), and the
    answer inside web page furniture; and one instruction-side corruption, the kinds in turn."""
    other = pairs[(index + len(pairs) // 2) % len(pairs)]
    head, tail = PAGE_FURNITURE[index % len(PAGE_FURNITURE)]
    outputs = {
        GOOD: pair["output"],
        "mismatched": other["output"],
        "truncated": truncate(pair["output"]),
        "blog": pair["blog_output"],
        "navigation": head.format(topic=pair["topic"]) + pair["output"] + tail,
    }
    rows = [
        {"instruction": pair["instruction"], "output": output, "label": int(kind == GOOD), "kind": kind,
         "pair_id": pair["id"]}
        for kind, output in outputs.items()
    ]  # fmt: skip
    kind = INSTRUCTION_CORRUPTIONS[index % len(INSTRUCTION_CORRUPTIONS)]
    instruction = corrupt_instruction(kind, pair, index, pairs)
    rows.append({"instruction": instruction, "output": pair["output"], "label": 0, "kind": kind, "pair_id": pair["id"]})
    return rows


def dev_set_from_pairs(pairs: Sequence[Mapping[str, str]], real: Sequence[Mapping[str, Any]] = ()) -> Dataset:
    """A labelled dev set from written pairs `{id, topic, instruction, output, blog_output}` (1 good : 5 bad), then
    the labelled `real` candidates `{id, instruction, output, label}` (kind `real`)."""
    if len(pairs) < 2:
        raise ValueError(f"A dev set needs at least 2 pairs to mismatch answers, got {len(pairs)}")
    for index, pair in enumerate(pairs):
        missing = [key for key in ("id", "topic", "instruction", "output", "blog_output") if not pair.get(key)]
        if missing:
            raise KeyError(f"dev pair {index}: missing or empty {missing}")
    rows = [row for index, pair in enumerate(pairs) for row in dev_rows(pair, index, pairs)]
    for index, candidate in enumerate(real):
        if candidate.get("label") not in (0, 1) or not candidate.get("output") or not candidate.get("id"):
            raise ValueError(f"real candidate {index}: needs an id, an output and a label 0 or 1")
        rows.append(
            {"instruction": candidate["instruction"], "output": candidate["output"], "label": candidate["label"],
             "kind": REAL, "pair_id": candidate["id"]}
        )  # fmt: skip
    return Dataset.from_list(rows, features=DEV_FEATURES)


def _bundled_lines(name: str) -> list[dict[str, Any]]:
    text = builtin_path(name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def bundled_dev_pairs() -> list[dict[str, str]]:
    return _bundled_lines("dev_pairs")


def bundled_real_candidates() -> list[dict[str, Any]]:
    """The labelled real candidates: `{id, writer, instruction, output, label}` (`writer` says which adapter)."""
    return _bundled_lines("dev_real")


def build_bundled_dev_set() -> Dataset:
    """`builtin:dev` as `humpback_trl/data/dev.jsonl` holds it (rewrite that file with this after editing the
    written pairs or the real candidates)."""
    return dev_set_from_pairs(bundled_dev_pairs(), bundled_real_candidates())


def load_dev_set(name: str = BUNDLED_DEV_SET, split: str = "train") -> Dataset:
    """A dev set from bundled data, a local file / folder or a Hub dataset with instruction, output and label
    columns (`kind` optional: rows without it count as "good" or "bad" by their label)."""
    table = load_table(name, split=split)
    missing = [column for column in ("instruction", "output", "label") if column not in table.column_names]
    if missing:
        raise MissingColumnError(f"Dev set {name}: no column(s) {missing}; its columns are {table.column_names}")
    bad = [index for index, label in enumerate(table["label"]) if label not in (0, 1, True, False)]
    if bad:
        raise UserError(f"Dev set {name}, row {bad[0]}: label must be 0 or 1, got {table['label'][bad[0]]!r}")
    kinds = table["kind"] if "kind" in table.column_names else [GOOD if label else "bad" for label in table["label"]]
    ids = table["pair_id"] if "pair_id" in table.column_names else [f"{name}:{i}" for i in range(len(table))]
    rows = {
        "instruction": list(table["instruction"]),
        "output": list(table["output"]),
        "label": [int(label) for label in table["label"]],
        "kind": kinds,
        "pair_id": [str(i) for i in ids],
    }
    if not any(rows["label"]) or all(rows["label"]):
        raise UserError(f"Dev set {name} needs rows of both labels (1 = good, 0 = bad) to measure a judge")
    return Dataset.from_dict(rows, features=DEV_FEATURES)


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def roc_auc(scores: Sequence[float | None], labels: Sequence[int]) -> float | None:
    """Probability that a random good row outscores a random bad one, ties counting half (Mann-Whitney U / n1 n0).

    A missing score (generate mode found no rating) ranks below every score: such a pair is never selected.
    None when either label is absent."""
    values = [float("-inf") if score is None else score for score in scores]
    positives = sum(labels)
    negatives = len(labels) - positives
    if not positives or not negatives:
        return None
    ranks = average_ranks(values)
    rank_sum = sum(rank for rank, label in zip(ranks, labels, strict=True) if label)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def spearman(a: Sequence[float | None], b: Sequence[float | None]) -> float | None:
    """Spearman's rank correlation over the rows both scored; None with under 3 such rows or a constant side."""
    both = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if len(both) < 3:
        return None
    ra, rb = average_ranks([x for x, _ in both]), average_ranks([y for _, y in both])
    mean = (len(both) + 1) / 2
    cov = sum((x - mean) * (y - mean) for x, y in zip(ra, rb, strict=True))
    var_a, var_b = sum((x - mean) ** 2 for x in ra), sum((y - mean) ** 2 for y in rb)
    return cov / (var_a * var_b) ** 0.5 if var_a and var_b else None


def precision_recall(selected: Sequence[bool], labels: Sequence[int]) -> tuple[float | None, float | None]:
    """Precision (good among selected; None when nothing is selected) and recall (selected among good)."""
    hits = sum(1 for keep, label in zip(selected, labels, strict=True) if keep and label)
    chosen, good = sum(selected), sum(labels)
    return (hits / chosen if chosen else None), (hits / good if good else None)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def calibration_metrics(
    scores: Sequence[float | None],
    labels: Sequence[int],
    kinds: Sequence[str],
    thresholds: Mapping[str, float],
    *,
    scorer: str,
    eligible: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """AUC overall and per kind, and precision / recall of each threshold's filter (score >= threshold and
    `eligible`: the same rule that selects A4 / A5, the digit-mass floor included), with the share of each kind
    the filter lets through."""
    eligible = eligible if eligible is not None else [True] * len(scores)
    good = [i for i, label in enumerate(labels) if label]
    # A corruption kind is measured against the good rows it corrupts (kind "good"; every good row where none is).
    reference = [i for i in good if kinds[i] == GOOD] or good
    auc_by_kind = {}
    for kind in sorted(set(kinds) - {GOOD}):
        own = [i for i, k in enumerate(kinds) if k == kind]
        # A kind with good rows of its own (real candidates) is measured on its rows alone: its good and bad
        # instructions were written for the same segments.
        rows = own if any(labels[i] for i in own) else reference + own
        auc_by_kind[kind] = _round(roc_auc([scores[i] for i in rows], [labels[i] for i in rows]))
    precision, recall, passed = {}, {}, {}
    for name, threshold in thresholds.items():
        selected = [s is not None and s >= threshold and ok for s, ok in zip(scores, eligible, strict=True)]
        p, r = precision_recall(selected, labels)
        precision[name], recall[name] = _round(p), _round(r)
        passed[name] = {
            kind: _round(sum(selected[i] for i, k in enumerate(kinds) if k == kind) / kinds.count(kind))
            for kind in sorted(set(kinds))
        }
    return {
        "scorer": scorer,
        "pairs": len(labels),
        "good": len(good),
        "auc": _round(roc_auc(scores, labels)),
        "auc_by_kind": auc_by_kind,
        "thresholds": dict(thresholds),
        "precision": precision,
        "recall": recall,
        "passed_by_kind": passed,
        "unscored": sum(1 for s in scores if s is None),
    }


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def calibration_markdown(block: Mapping[str, Any]) -> list[str]:
    """A table with one row per scorer: AUC, per-kind AUC, A4 / A5 precision and recall (report.md lines)."""
    scorers = block["scorers"]
    kinds = sorted({kind for metrics in scorers for kind in metrics["auc_by_kind"]})
    lines = [
        f"Judge calibration on `{block['dev_set']}` ({scorers[0]['pairs']} pairs, {scorers[0]['good']} good):",
        "",
        "| scorer | AUC | " + " | ".join(f"AUC {kind}" for kind in kinds) + " | A4 P / R | A5 P / R |",
        "|---|---|" + "---|" * len(kinds) + "---|---|",
    ]
    for metrics in scorers:
        by_kind = " | ".join(_cell(metrics["auc_by_kind"].get(kind)) for kind in kinds)
        pr = [f"{_cell(metrics['precision'][t])} / {_cell(metrics['recall'][t])}" for t in ("a4", "a5")]
        lines.append(f"| {metrics['scorer']} | {_cell(metrics['auc'])} | {by_kind} | {pr[0]} | {pr[1]} |")
    for judge, rho in block.get("agreement", {}).items():
        lines.append(f"\nSpearman agreement of `{block['scorers'][0]['scorer']}` with `{judge}`: {_cell(rho)}")
    return lines


def _ranked_replies(
    rows: Iterable[Mapping[str, Any]], by_id: Mapping[str, Mapping[str, Any]], lang: str
) -> dict[str, list[Mapping[str, Any]]]:
    replies: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        parent = by_id.get(row["parent_id"]) if row["parent_id"] is not None else None
        if (
            row["role"] == "assistant"
            and parent is not None
            and parent["parent_id"] is None
            and row["rank"] is not None
            and usable(row, lang)
        ):
            replies.setdefault(parent["message_id"], []).append(row)
    return replies


def oasst_dev_set(
    messages: Iterable[Mapping[str, Any]],
    lang: str = "en",
    limit: int | None = None,
    exclude_roots: Iterable[str] = (),
) -> Dataset:
    """Per first-turn prompt with at least two ranked replies: its rank-0 reply (label 1) and its lowest-ranked reply
    (label 0). `exclude_roots` leaves out prompts whose rank-0 reply is a seed pair (a model that trained on it would
    be graded on its own training data). Prompts come in message-id order; `limit` caps the number of prompts."""
    rows, by_id = index_export(messages)
    replies = _ranked_replies(rows, by_id, lang)
    excluded = set(exclude_roots)
    dev: list[dict[str, Any]] = []
    for root_id in sorted(replies):
        root, ranked = by_id[root_id], sorted(replies[root_id], key=lambda row: row["rank"])
        if root_id in excluded or not usable(root, lang) or len(ranked) < 2 or ranked[0]["rank"] != 0:
            continue
        if limit is not None and len(dev) == 2 * limit:
            break
        for reply, label in ((ranked[0], 1), (ranked[-1], 0)):
            dev.append(
                {"instruction": root["text"], "output": reply["text"], "label": label,
                 "kind": GOOD if label else OASST_KIND, "pair_id": f"oasst1:{root_id}/{reply['message_id']}"}
            )  # fmt: skip
    logger.info("oasst dev set: %d prompts with a rank-0 and a lower-ranked reply", len(dev) // 2)
    return Dataset.from_list(dev, features=DEV_FEATURES)


def load_oasst_dev_set(
    name: str = OASST1_HUB_ID,
    split: str = "validation",
    lang: str = "en",
    limit: int | None = None,
    exclude_roots: Iterable[str] = (),
) -> Dataset:
    """`oasst_dev_set` from a local export or a Hub dataset split (oasst1's validation split by default; the seed
    takes the first 3,200 pairs in message-id order of train + validation, so pass their roots as `exclude_roots`)."""
    return oasst_dev_set(load_table(name, split=split), lang=lang, limit=limit, exclude_roots=exclude_roots)
