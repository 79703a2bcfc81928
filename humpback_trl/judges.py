"""Judges that compare two answers to one instruction, and how accurate each is on labelled pairs.

Methods (`judge_method`):
- `pairwise`: the judge model sees the instruction and both answers and is cued to name the better one; its
  preference is read from the next-token probabilities of "A" and "B", in both orders. One order alone is
  position-biased (a small model names "A" whatever is shown), so a comparison is won only when both orders agree
  (Balanced Position Calibration, Wang et al. 2023).
- `rubric`: each answer is scored alone with the curation rubric in logits mode (Self-Rewarding LMs' pointwise
  judging, Yuan et al. 2024); an answer wins when its score is more than `rubric_margin` above the other's.
- `likelihood`: each answer is scored alone with the likelihood signals of curation (`likelihood.py`: PMI between
  instruction and answer, the end-of-turn probability after it) plus its fluency (`lp_cond`) under the judge model;
  it wins by more than `likelihood_margin`.
Pointwise methods have no position: one score per (instruction, answer).

Calibration: a labelled pairwise set in TRL's preference format (`prompt`, `chosen`, `rejected`, as strings or
conversational messages; optional `kind`). The bundled one (`builtin:pairwise_dev`, `pairwise_dev_rows`) pairs each
written answer of `humpback_trl/data/dev_pairs.jsonl` (none of them seed pairs) with five corruptions of it:
truncated, off-topic (another pair's answer), evasive (a generic non-answer), blog voice and navigation text, and
two degenerate answers small models write: a loop (one of its sentences repeated) and word salad (its words shuffled).
`pairwise_accuracy` counts a choice of the chosen answer as 1, a tie as 0.5; a position-sensitive method's two
orders count as two choices. A judge below `min_judge_accuracy` is undecided: its verdicts are no result.
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from humpback_trl.calibration import PAGE_FURNITURE, bundled_dev_pairs, truncate
from humpback_trl.chat_template import encode, render
from humpback_trl.engines import Engine, as_engine
from humpback_trl.errors import MissingColumnError, UserError
from humpback_trl.filters import sentences
from humpback_trl.instruction_checks import trigrams, words
from humpback_trl.likelihood import LikelihoodWeights
from humpback_trl.pairs import load_table
from humpback_trl.scoring import PROMPT_STYLES, ScoreCue, option_cue, score_pairs

JUDGE_METHODS = ("pairwise", "rubric", "likelihood")
POSITIONAL_METHODS = frozenset({"pairwise"})
BUNDLED_PAIRWISE_DEV = "builtin:pairwise_dev"
# The degenerate answers small models write (a sentence looped, word salad) follow the five corruptions of every
# pair, so the rows of the first five kinds keep their order. A likelihood judge rewards repetition: loop tests it.
DEGENERATE_KINDS = ("loop", "word_salad")
PAIRWISE_DEV_KINDS = ("truncated", "off_topic", "evasive", "blog", "navigation", *DEGENERATE_KINDS)
# A judge must beat a coin by this much on the labelled pairs before its verdicts count: with the bundled 140 pairs
# the 95% interval of a coin's accuracy is about 0.42-0.58.
MIN_JUDGE_ACCURACY = 0.6
# A rubric score is an expected rating in [1, 5]; a tenth of a rating point is below what the rubric can mean.
RUBRIC_MARGIN = 0.1
LIKELIHOOD_MARGIN = 0.0
# The likelihood judge adds fluency (lp_cond) to curation's relevance (PMI) and completeness (end-of-turn) terms:
# PMI barely separates word salad from an answer (the instruction explains neither much), and answers cut at
# max_new_tokens pay the end-of-turn term. Chosen with SmolLM2-135M-Instruct among 8 weightings (H20, 2026-12-06) on
# builtin:pairwise_dev and 16 real comparisons of its answers with the random tiny model's word salad: curation's
# (1, 0.1, 0) 0.92 and 8 of 16; (1, 0.1, 0.5) 0.93 and 16 of 16; (1, 0.1, 1) 0.88 and 16 of 16. Selected on the
# data it is reported on: no held-out figure yet.
JUDGE_LIKELIHOOD_WEIGHTS = LikelihoodWeights(pmi=1.0, end=0.1, cond=0.5)
# A looping answer loses to one that does not loop, whatever the scores: a repeated sentence is likely text, so the
# likelihood judge preferred builtin:pairwise_dev's loops over the answers they repeat in 19 of 20 pairs (0.05), and
# small models loop. A loop: at least LOOP_SHARE of the answer's word trigrams repeat earlier ones. Measured: the
# set's 20 loops 0.75-0.97, its other 260 answers 0.02 at most; builtin:dev's 168 outputs, the 181 seed answers and
# the demo's 48 model answers 0.19 at most (a count of repeats would flag long documentation segments).
LOOP_SHARE = 0.4
OPTIONS = ("A", "B")
JUDGE_CUE = "Better response:"
JUDGE_PROMPT = (
    "You are comparing two responses to the same instruction. Decide which response is the more helpful, accurate, "
    "complete and clearly written answer to the instruction. The order of the responses and their length must not "
    "affect your decision. Reply with the letter of the better response: A or B.\n\n"
    "### Instruction:\n{instruction}\n\n### Response A:\n{a}\n\n### Response B:\n{b}"
)
# Generic non-answers ("evasive" corruptions), one per pair in turn; {topic} is the pair's topic.
EVASIVE_ANSWERS = (
    "That's a great question! The answer really depends on many factors, and everyone's situation is different. "
    "I'd recommend doing some more research on {topic} or asking an expert for advice.",
    "I'm sorry, but I can't help with that request. Is there anything else I can do for you?",
    "There are many things to consider when it comes to {topic}. It is an interesting and important subject that "
    "people have discussed for a long time, and there are several ways to look at it.",
)


def check_methods(methods: Sequence[str], option: str = "judge_method") -> list[str]:
    methods = [methods] if isinstance(methods, str) else list(methods)
    unknown = [method for method in methods if method not in JUDGE_METHODS]
    if not methods or unknown:
        raise UserError(f"{option} must list methods among {JUDGE_METHODS}, got {methods}")
    if len(set(methods)) != len(methods):
        raise UserError(f"{option} lists a method twice: {methods}")
    return methods


# ---- the labelled pairwise set ----


def looped(text: str) -> str:
    """The text's first sentence of five words or more, repeated until about the text's length: a looping answer."""
    long = [sentence for sentence in sentences(text.strip()) if len(sentence.split()) >= 5]
    sentence = long[0] if long else text.strip()
    return " ".join([sentence] * max(2, round(len(text) / (len(sentence) + 1))))


def word_salad(text: str, seed: int) -> str:
    """The text's words in an order shuffled with `seed`: every word of the answer, no sentence."""
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


def pairwise_dev_rows(pairs: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """Per written pair `{id, topic, instruction, output, blog_output}`, its answer (chosen) against each of the
    five corruptions (rejected), in `PAIRWISE_DEV_KINDS` order; then per pair its answer against each degenerate
    answer (`DEGENERATE_KINDS`). Off-topic takes the answer of the pair half the set away (never its own or a
    neighbour's), as the curation dev set does; word salad is shuffled with the pair's index as seed."""
    if len(pairs) < 2:
        raise ValueError(f"A pairwise dev set needs at least 2 written pairs for off-topic answers, got {len(pairs)}")
    rejected: list[dict[str, str]] = []
    for index, pair in enumerate(pairs):
        head, tail = PAGE_FURNITURE[index % len(PAGE_FURNITURE)]
        rejected.append({
            "truncated": truncate(pair["output"]),
            "off_topic": pairs[(index + len(pairs) // 2) % len(pairs)]["output"],
            "evasive": EVASIVE_ANSWERS[index % len(EVASIVE_ANSWERS)].format(topic=pair["topic"].lower()),
            "blog": pair["blog_output"],
            "navigation": head.format(topic=pair["topic"]) + pair["output"] + tail,
            "loop": looped(pair["output"]),
            "word_salad": word_salad(pair["output"], index),
        })  # fmt: skip
    corruptions = [kind for kind in PAIRWISE_DEV_KINDS if kind not in DEGENERATE_KINDS]
    order = [(index, kind) for index in range(len(pairs)) for kind in corruptions]
    order += [(index, kind) for index in range(len(pairs)) for kind in DEGENERATE_KINDS]
    return [
        {"prompt": pairs[index]["instruction"], "chosen": pairs[index]["output"], "rejected": rejected[index][kind],
         "kind": kind, "pair_id": f"{pairs[index]['id']}/{kind}"}
        for index, kind in order
    ]  # fmt: skip


def bundled_pairwise_dev() -> list[dict[str, str]]:
    """What `humpback_trl/data/pairwise_dev.jsonl` holds (a test checks the shipped file against it)."""
    return pairwise_dev_rows(bundled_dev_pairs())


def _message_text(value: Any, role: str, name: str, index: int, column: str) -> str:
    """A preference column's text: a string, or conversational messages whose single `role` turn is the text (a
    system turn before the prompt is allowed)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, list) and all(isinstance(m, Mapping) for m in value):
        turns = [m.get("content") for m in value if m.get("role") == role]
        others = [m.get("role") for m in value if m.get("role") not in (role, "system")]
        if len(turns) != 1 or others:
            raise UserError(
                f"{name}, row {index}: {column!r} must hold one {role} turn (a single-turn comparison), got roles "
                f"{[m.get('role') for m in value]}"
            )
        text = turns[0]
    else:
        raise UserError(f"{name}, row {index}: {column!r} must be a string or a list of messages")
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{name}, row {index}: empty {column!r}")
    return text


def load_pairwise_dev(name: str = BUNDLED_PAIRWISE_DEV, split: str = "train") -> list[dict[str, str]]:
    """Rows `{prompt, chosen, rejected, kind, pair_id}` (strings) from bundled data, a local file or a Hub dataset in
    TRL's preference format; rows without `kind` count as kind "pair"."""
    table = load_table(name, split=split)
    missing = [column for column in ("prompt", "chosen", "rejected") if column not in table.column_names]
    if missing:
        raise MissingColumnError(
            f"Pairwise dev set {name}: no column(s) {missing}; its columns are {table.column_names} (TRL's preference "
            "format: prompt, chosen, rejected[, kind])"
        )
    rows = []
    for index, row in enumerate(table):
        chosen = _message_text(row["chosen"], "assistant", name, index, "chosen")
        rejected = _message_text(row["rejected"], "assistant", name, index, "rejected")
        if chosen == rejected:
            raise UserError(f"{name}, row {index}: chosen and rejected are the same text; no judge can tell them apart")
        rows.append(
            {"prompt": _message_text(row["prompt"], "user", name, index, "prompt"), "chosen": chosen,
             "rejected": rejected, "kind": str(row.get("kind") or "pair"),
             "pair_id": str(row.get("pair_id") or f"{name}:{index}")}
        )  # fmt: skip
    if not rows:
        raise UserError(f"Pairwise dev set {name} is empty")
    return rows


# ---- the pairwise A/B cue ----


def judge_cue(tokenizer: PreTrainedTokenizerBase) -> ScoreCue:
    context = render(tokenizer, [{"role": "user", "content": JUDGE_PROMPT}], add_generation_prompt=True)
    return option_cue(tokenizer, context, JUDGE_CUE, OPTIONS)


def judge_prompt(tokenizer: PreTrainedTokenizerBase, cue: ScoreCue, instruction: str, a: str, b: str) -> str:
    content = JUDGE_PROMPT.format(instruction=instruction, a=a, b=b)
    return render(tokenizer, [{"role": "user", "content": content}], add_generation_prompt=True) + cue.text


def judge_prefix_ids(tokenizer: PreTrainedTokenizerBase, cue: ScoreCue) -> list[int]:
    """The tokens every judge prompt starts with (system block, user header, the judging instructions): the longest
    common token prefix of two prompts whose instructions differ, since the tokens before the instruction can merge
    with it (as for the rubric, `scoring.rubric_prefix_ids`)."""
    first, second = (encode(tokenizer, judge_prompt(tokenizer, cue, text, "x", "y")) for text in ("Alpha", "Zulu"))
    length = 0
    while length < min(len(first), len(second)) and first[length] == second[length]:
        length += 1
    return first[:length]


def option_probabilities(
    model: Engine | PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    cue: ScoreCue,
    batch_size: int,
    prefix_cache: bool = True,
) -> list[tuple[float, float]]:
    """p("A") and p("B") under the judge's full next-token distribution after each prompt, in input order.

    With `prefix_cache`, the judging instructions every prompt starts with are offered to the engine as a shared
    prefix (the transformers engine runs them once and reuses their KV cache): with short answers they are about
    half of each prompt's tokens."""
    prefix_ids = judge_prefix_ids(tokenizer, cue) if prefix_cache else []
    logprobs = as_engine(model).next_token_logprobs(
        tokenizer, prompts, cue.digit_ids, prefix_ids=prefix_ids, batch_size=batch_size
    )
    return [(p_a, p_b) for p_a, p_b in logprobs.exp().tolist()]


# ---- one judge model bound to one method ----


@dataclass(frozen=True)
class JudgeOptions:
    batch_size: int = 4
    rubric_prompt: str = "verbatim"
    rubric_margin: float = RUBRIC_MARGIN
    likelihood_margin: float = LIKELIHOOD_MARGIN
    likelihood_weights: LikelihoodWeights = JUDGE_LIKELIHOOD_WEIGHTS

    def __post_init__(self) -> None:
        check_options(self.rubric_prompt, self.rubric_margin, self.likelihood_margin)


def check_options(rubric_prompt: str, rubric_margin: float, likelihood_margin: float) -> None:
    if rubric_prompt not in PROMPT_STYLES:
        raise UserError(f"rubric_prompt must be one of {PROMPT_STYLES}, got {rubric_prompt!r}")
    if rubric_margin < 0 or likelihood_margin < 0:
        raise UserError(
            f"rubric_margin and likelihood_margin must be at least 0, got {rubric_margin}, {likelihood_margin}"
        )


class Judge:
    """A judge model on its engine (a model in memory is judged with the transformers engine) with one method:
    `probabilities` for the positional A/B cue, `scores` for pointwise ones."""

    def __init__(
        self, model: Engine | PreTrainedModel, tokenizer: PreTrainedTokenizerBase, method: str, options: JudgeOptions
    ) -> None:
        (self.method,) = check_methods([method])
        self.engine, self.tokenizer, self.options = as_engine(model), tokenizer, options

    @property
    def positional(self) -> bool:
        return self.method in POSITIONAL_METHODS

    @property
    def margin(self) -> float:
        return self.options.rubric_margin if self.method == "rubric" else self.options.likelihood_margin

    def probabilities(self, triples: Sequence[tuple[str, str, str]]) -> list[tuple[float, float]]:
        """(p_A, p_B) per (instruction, answer shown as A, answer shown as B)."""
        cue = judge_cue(self.tokenizer)
        prompts = [judge_prompt(self.tokenizer, cue, *triple) for triple in triples]
        return option_probabilities(self.engine, self.tokenizer, prompts, cue, self.options.batch_size)

    def scores(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """One score per (instruction, answer); a pair that occurs twice is scored once."""
        distinct = list(dict.fromkeys(pairs))
        mode = "logits" if self.method == "rubric" else "likelihood"
        results = score_pairs(
            self.engine, self.tokenizer, distinct, mode=mode, batch_size=self.options.batch_size,
            prompt_style=self.options.rubric_prompt, likelihood_weights=self.options.likelihood_weights,
        )  # fmt: skip
        values = [result.score for result in results]
        by_pair = dict(zip(distinct, values, strict=True))
        return [by_pair[pair] for pair in pairs]

    def judge(self, rows: Sequence[Mapping[str, str]]) -> list[dict[str, float]]:
        """The raw judgments of comparisons `{instruction, a, b}`: both orders' (p_A, p_B) for the pairwise cue
        (`p_a_first` ... with a shown first, `p_a_second` ... with a shown second), else each answer's score and
        whether it loops."""
        if self.positional:
            first = self.probabilities([(row["instruction"], row["a"], row["b"]) for row in rows])
            second = self.probabilities([(row["instruction"], row["b"], row["a"]) for row in rows])
            return [
                {"p_a_first": f[0], "p_b_first": f[1], "p_a_second": s[0], "p_b_second": s[1]}
                for f, s in zip(first, second, strict=True)
            ]
        scores = self.scores(
            [(row["instruction"], row["a"]) for row in rows] + [(r["instruction"], r["b"]) for r in rows]
        )
        return [
            {
                "score_a": scores[i],
                "score_b": scores[len(rows) + i],
                "loops_a": loops(row["a"]),
                "loops_b": loops(row["b"]),
            }
            for i, row in enumerate(rows)
        ]


# ---- verdicts ----


def preference(p_a: float, p_b: float) -> float:
    """p(first is better) renormalised over the two options; 0.5 when the judge put no mass on either."""
    total = p_a + p_b
    return p_a / total if total > 0 else 0.5


def side(prefer_a: float) -> float:
    """One choice as a number: 1 for a, 0 for b, 0.5 undecided."""
    return 1.0 if prefer_a > 0.5 else 0.0 if prefer_a < 0.5 else 0.5


def verdict(prefer_a_first: float, prefer_a_second: float) -> int:
    """+1: model a wins (both orders prefer it), -1: model b wins, 0: tie (the orders disagree or are undecided).

    `prefer_a_first` is p(a better) with a shown as A; `prefer_a_second` the same with a shown as B."""
    if prefer_a_first > 0.5 and prefer_a_second > 0.5:
        return 1
    if prefer_a_first < 0.5 and prefer_a_second < 0.5:
        return -1
    return 0


def loops(text: str) -> bool:
    """The answer repeats itself: at least `LOOP_SHARE` of its word trigrams occurred before in it."""
    grams = trigrams(words(text))
    return bool(grams) and 1 - len(set(grams)) / len(grams) >= LOOP_SHARE


def pointwise_verdict(
    score_a: float | None, score_b: float | None, margin: float, loops_a: bool = False, loops_b: bool = False
) -> int:
    """+1 when a's score is more than `margin` above b's, -1 the other way, else (or without a score) 0; an answer
    that loops loses to one that does not, whatever the scores."""
    if loops_a != loops_b:
        return -1 if loops_a else 1
    if score_a is None or score_b is None or abs(score_a - score_b) <= margin:
        return 0
    return 1 if score_a > score_b else -1


def read_judgment(raw: Mapping[str, Any], margin: float) -> dict[str, Any]:
    """A raw judgment (`Judge.judge`) as the verdict for a and, for the pairwise cue, each order's preference and
    the choices it made (`choices`: one per order, 1 = a, 0 = b, 0.5 undecided)."""
    if "p_a_first" in raw:
        prefer_first = preference(raw["p_a_first"], raw["p_b_first"])
        prefer_second = 1 - preference(raw["p_a_second"], raw["p_b_second"])
        return {
            "a_first": {"p_a": raw["p_a_first"], "p_b": raw["p_b_first"]},
            "b_first": {"p_a": raw["p_a_second"], "p_b": raw["p_b_second"]},
            "prefer_a_when_first": prefer_first,
            "prefer_a_when_second": prefer_second,
            "choices": [side(prefer_first), side(prefer_second)],
            "verdict": verdict(prefer_first, prefer_second),
        }
    # Judgments saved before the loop rule carry no loop flags: read as no loop.
    flags = {name: raw.get(name, False) for name in ("loops_a", "loops_b")}
    found = pointwise_verdict(raw["score_a"], raw["score_b"], margin, **flags)
    return {
        "score_a": raw["score_a"],
        "score_b": raw["score_b"],
        **flags,
        "choices": [(found + 1) / 2],
        "verdict": found,
    }


def position_stats(records: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Over pairwise-cue records: position consistency (both orders pick the same answer) and how often the
    first-shown answer is preferred; None without any."""
    judged = [record for record in records if "prefer_a_when_first" in record]
    if not judged:
        return {"position_consistency": None, "first_position_rate": None}
    consistent = sum(1 for r in judged if r["verdict"] != 0)
    first = sum((r["prefer_a_when_first"] > 0.5) + (r["prefer_a_when_second"] < 0.5) for r in judged)
    return {
        "position_consistency": round(consistent / len(judged), 4),
        "first_position_rate": round(first / (2 * len(judged)), 4),
    }


# ---- calibration ----


def _accuracy(records: Sequence[Mapping[str, Any]]) -> float:
    """Share of choices that picked a (the chosen answer), ties counting half."""
    return round(statistics.fmean(choice for record in records for choice in record["choices"]), 4)


def calibration_metrics(
    records: Sequence[Mapping[str, Any]],
    kinds: Sequence[str],
    *,
    method: str,
    judge: str,
    dev_set: str,
    min_accuracy: float = MIN_JUDGE_ACCURACY,
) -> dict[str, Any]:
    """Accuracy of read judgments of (chosen as a, rejected as b) pairs: overall, per kind, the share of decided
    verdicts, position consistency for the pairwise cue, and whether the judge is undecided."""
    accuracy = _accuracy(records)
    metrics: dict[str, Any] = {
        "method": method,
        "judge": judge,
        "pairwise_dev": dev_set,
        "pairs": len(records),
        "pairwise_accuracy": accuracy,
        "accuracy_by_kind": {
            kind: _accuracy([r for r, k in zip(records, kinds, strict=True) if k == kind])
            for kind in dict.fromkeys(kinds)
        },
        "verdict_accuracy": _accuracy([{"choices": [(r["verdict"] + 1) / 2]} for r in records]),
        "decided": round(sum(1 for r in records if r["verdict"]) / len(records), 4),
        "min_accuracy": min_accuracy,
        "undecided": accuracy < min_accuracy,
    }
    if method in POSITIONAL_METHODS:
        metrics.update(position_stats(records))
    return metrics


def calibration_from_raw(
    judge: Judge,
    dev: Sequence[Mapping[str, str]],
    raws: Sequence[Mapping[str, float]],
    *,
    judge_name: str,
    dev_set: str,
    min_accuracy: float,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The calibration from the judge's raw judgments of the labelled pairs (chosen as a), and one record per pair
    (its judgment read, with its kind)."""
    records = [
        {"pair_id": row["pair_id"], "kind": row["kind"], **read_judgment(raw, judge.margin)}
        for row, raw in zip(dev, raws, strict=True)
    ]
    metrics = calibration_metrics(
        records, [row["kind"] for row in dev], method=judge.method, judge=judge_name, dev_set=dev_set,
        min_accuracy=min_accuracy,
    )  # fmt: skip
    return metrics, records


def calibrate_judge(
    judge: Judge, dev: Sequence[Mapping[str, str]], *, judge_name: str, dev_set: str, min_accuracy: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Judge the labelled pairs, then `calibration_from_raw`."""
    raws = judge.judge([{"instruction": row["prompt"], "a": row["chosen"], "b": row["rejected"]} for row in dev])
    return calibration_from_raw(judge, dev, raws, judge_name=judge_name, dev_set=dev_set, min_accuracy=min_accuracy)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def accuracy_note(metrics: Mapping[str, Any]) -> str:
    """One line: the judge's accuracy on the labelled pairs, and whether its verdicts count."""
    consistency = (
        f", position consistency {_cell(metrics['position_consistency'])}" if "position_consistency" in metrics else ""
    )
    state = (
        f"UNDECIDED (below {metrics['min_accuracy']:.2f}): its verdicts below are not a result"
        if metrics["undecided"]
        else "decides"
    )
    return (
        f"Judge `{metrics['judge']}` ({metrics['method']}): pairwise accuracy {metrics['pairwise_accuracy']:.2f} on "
        f"`{metrics['pairwise_dev']}` ({metrics['pairs']} labelled pairs{consistency}); {state}."
    )


def calibration_lines(methods: Sequence[Mapping[str, Any]]) -> list[str]:
    """One row per method: accuracy overall and per kind, decided share, position consistency (report.md lines)."""
    kinds = list(dict.fromkeys(kind for metrics in methods for kind in metrics["accuracy_by_kind"]))
    first = methods[0]
    lines = [
        f"Judge calibration of `{first['judge']}` on `{first['pairwise_dev']}` ({first['pairs']} labelled pairs; "
        f"undecided below {first['min_accuracy']:.2f}):",
        "",
        "| method | accuracy | " + " | ".join(kinds) + " | decided | consistency | verdict |",
        "|---|---|" + "---|" * len(kinds) + "---|---|---|",
    ]
    for metrics in methods:
        by_kind = " | ".join(_cell(metrics["accuracy_by_kind"].get(kind)) for kind in kinds)
        lines.append(
            f"| {metrics['method']} | {metrics['pairwise_accuracy']:.2f} | {by_kind} | {metrics['decided']:.2f} | "
            f"{_cell(metrics.get('position_consistency'))} | {'undecided' if metrics['undecided'] else 'decides'} |"
        )
    return lines


def write_calibration(report: Mapping[str, Any], records: Mapping[str, list[dict[str, Any]]], output_dir: Path) -> None:
    """calibration.json / .md and judgments.jsonl (every pair's read judgment per method)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "calibration.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (output_dir / "calibration.md").write_text("\n".join(calibration_lines(report["methods"])) + "\n", encoding="utf-8")
    with (output_dir / "judgments.jsonl").open("w", encoding="utf-8") as handle:
        for method, rows in records.items():
            handle.writelines(json.dumps({"method": method, **row}) + "\n" for row in rows)
