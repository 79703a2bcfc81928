"""The project's judges as rewards for TRL's online trainers (`GRPOTrainer(reward_funcs=...)`).

Each reward is a callable in TRL's shape, `reward(prompts, completions, **columns) -> list[float]`, one value per
completion, and holds a fixed judge (a model loaded once: the base model, `judge_model` or a published adapter),
never the policy being trained unless `Judge.is_policy` says so (and the card flags it):

- `RubricReward`: the backtranslation rubric in logits mode (`scoring.score_logits`: the expected rating 1-5, one
  forward pass per answer, the rubric's KV cache shared by every batch);
- `LikelihoodReward`: the likelihood score of curation (`likelihood.likelihood_features`: PMI of instruction and
  answer plus the end-of-turn term under the judge), per-output passes once per distinct answer;
- both pointwise rewards put a looping completion (`judges.loops`) below every other one of the call: likelihood
  rewards repetition;
- `PairwiseReward`: the completions for one prompt judged against each other, every pair in both orders with the
  A/B cue of the evaluation (a win only when both orders agree), ranked by Copeland score (wins minus losses), only
  between answers of similar length (SERL, arXiv 2511.07922: within +-20%), normalised by the group's other answers
  to [-1, 1].

TRL passes prompts and completions as text (standard format) or as message lists (conversational format); both are
read. The instruction a judge sees is the dataset's `instruction` column when TRL passes it (the prompt the policy
sees also carries the source tags and system prompt of M_k's format), else the prompt's last user turn.

`judge_accuracy` measures a reward's judge on labelled data before training: ROC AUC of the pointwise rewards on
`builtin:dev` (good answers against corrupted ones), pairwise accuracy of the pairwise reward on
`builtin:pairwise_dev` (a good and a corrupted answer to one instruction; a win needs both orders, a tie counts
half). Under `judges.MIN_JUDGE_ACCURACY` (0.6, the evaluation's bar: a coin's 95% interval on 100 labelled rows
reaches about 0.6) a reward is refused (`check_accuracy`).
"""

from __future__ import annotations

import itertools
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from accelerate.utils import gather_object
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from humpback_trl.calibration import load_dev_set, roc_auc
from humpback_trl.errors import UserError
from humpback_trl.judges import (
    MIN_JUDGE_ACCURACY,
    judge_cue,
    judge_prompt,
    load_pairwise_dev,
    loops,
    option_probabilities,
    preference,
    verdict,
)
from humpback_trl.likelihood import LikelihoodWeights, likelihood_features
from humpback_trl.pairs import load_table
from humpback_trl.scoring import PROMPT_STYLES, score_logits
from humpback_trl.shards import process_state

REWARDS: tuple[str, ...] = ("rubric", "likelihood", "pairwise")
CHANCE = 0.5
# SERL compares two answers only when their lengths are within 20% of each other: a judge's length bias cannot
# then decide the ranking.
LENGTH_WINDOW = 0.2
# A looping completion's reward: this far below the lowest reward of its call (rubric ratings span 1-5, likelihood
# scores a few nats), so it loses to every completion that does not loop.
LOOP_PENALTY = 1.0

Completion = str | list[dict[str, Any]]


@dataclass
class Judge:
    """A loaded judge: `name` for reports and cards; `is_policy` when it is the model being trained (self-judged)."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    is_policy: bool = False


def message_text(value: Completion) -> str:
    """A standard-format text as it is; a conversational one as the content of its assistant turns."""
    if isinstance(value, str):
        return value
    return "".join(message["content"] for message in value if message["role"] == "assistant")


def instruction_text(prompt: Completion) -> str:
    """A standard-format prompt as it is; a conversational one as its last user turn."""
    if isinstance(prompt, str):
        return prompt
    users = [message["content"] for message in prompt if message["role"] == "user"]
    if not users:
        raise UserError(f"A conversational prompt without a user turn: {prompt!r}")
    return users[-1]


def instructions_of(prompts: Sequence[Completion], columns: Mapping[str, Any]) -> list[str]:
    """The instruction each judge sees: the `instruction` column where the dataset has one, else the prompt's."""
    given = columns.get("instruction")
    return list(given) if given is not None else [instruction_text(prompt) for prompt in prompts]


class PointwiseReward(ABC):
    """A reward that scores each (instruction, answer) alone; subclasses define `score`."""

    __name__ = "pointwise"
    metric = "auc"

    def __init__(self, judge: Judge, batch_size: int = 8) -> None:
        self.judge = judge
        self.batch_size = batch_size

    @abstractmethod
    def score(
        self, instructions: Sequence[str], outputs: Sequence[str], show_progress: bool = False
    ) -> list[float | None]:
        """One reward per (instruction, output), in order; `show_progress` for the long calibration pass."""

    def rewards(
        self, instructions: Sequence[str], outputs: Sequence[str], show_progress: bool = False
    ) -> list[float | None]:
        """`score`, with every looping output (`judges.loops`) put below all others: a likelihood judge rewards
        repetition, and a policy trained on it would learn to loop."""
        scores = self.score(instructions, outputs, show_progress)
        looping = [loops(output) for output in outputs]
        kept = [score for score in scores if score is not None]
        if not any(looping) or not kept:
            return scores
        floor = min(kept) - LOOP_PENALTY
        return [floor if flag else score for score, flag in zip(scores, looping, strict=True)]

    def __call__(self, prompts: Sequence[Completion], completions: Sequence[Completion], **columns: Any) -> list:
        return self.rewards(instructions_of(prompts, columns), [message_text(c) for c in completions])


class RubricReward(PointwiseReward):
    """The expected rubric rating (1-5) of each answer, read from the judge's digit probabilities after "Score:"."""

    __name__ = "rubric"

    def __init__(self, judge: Judge, batch_size: int = 8, prompt_style: str = "score-only") -> None:
        if prompt_style not in PROMPT_STYLES:
            raise UserError(f"rubric_prompt must be one of {PROMPT_STYLES}, got {prompt_style!r}")
        super().__init__(judge, batch_size)
        self.prompt_style = prompt_style

    def score(
        self, instructions: Sequence[str], outputs: Sequence[str], show_progress: bool = False
    ) -> list[float | None]:
        pairs = list(zip(instructions, outputs, strict=True))
        results = score_logits(
            self.judge.model,
            self.judge.tokenizer,
            pairs,
            self.batch_size,
            show_progress=show_progress,
            prompt_style=self.prompt_style,
        )
        return [result.score for result in results]


class LikelihoodReward(PointwiseReward):
    """The likelihood score of curation under the judge. An empty answer has no token to score: it gets None, which
    TRL leaves out of the reward statistics and gives no advantage."""

    __name__ = "likelihood"

    def __init__(self, judge: Judge, batch_size: int = 8, weights: LikelihoodWeights | None = None) -> None:
        super().__init__(judge, batch_size)
        self.weights = weights or LikelihoodWeights()

    def score(
        self, instructions: Sequence[str], outputs: Sequence[str], show_progress: bool = False
    ) -> list[float | None]:
        kept = [i for i, output in enumerate(outputs) if output]
        features = likelihood_features(
            self.judge.model,
            self.judge.tokenizer,
            [instructions[i] for i in kept],
            [outputs[i] for i in kept],
            weights=self.weights,
            batch_size=self.batch_size,
            show_progress=show_progress,
        )
        scores: list[float | None] = [None] * len(outputs)
        for index, pair in zip(kept, features, strict=True):
            scores[index] = pair.score
        return scores


def comparable(a: str, b: str, window: float) -> bool:
    """Lengths (characters) within `window` of each other: the longer at most (1 + window) times the shorter."""
    return max(len(a), len(b)) <= (1 + window) * min(len(a), len(b))


def groups_of(prompts: Sequence[Completion]) -> list[list[int]]:
    """Indices of the completions of each distinct prompt, in first-seen order (TRL repeats each prompt
    `num_generations` times)."""
    groups: dict[str, list[int]] = {}
    for index, prompt in enumerate(prompts):
        groups.setdefault(json.dumps(prompt, sort_keys=True), []).append(index)
    return list(groups.values())


def group_pairs(groups: Sequence[Sequence[int]], outputs: Sequence[str], window: float) -> list[tuple[int, int]]:
    """The (i, j) pairs of one group that are judged: different answers of comparable length."""
    return [
        (i, j)
        for group in groups
        for i, j in itertools.combinations(group, 2)
        if outputs[i] != outputs[j] and comparable(outputs[i], outputs[j], window)
    ]


def copeland(
    groups: Sequence[Sequence[int]], pairs: Sequence[tuple[int, int]], verdicts: Sequence[int], size: int
) -> list[float]:
    """Per completion: (wins - losses) over the pairs judged, divided by the other answers in its group."""
    points = [0] * size
    for (i, j), outcome in zip(pairs, verdicts, strict=True):
        points[i] += outcome
        points[j] -= outcome
    others = {index: len(group) - 1 for group in groups for index in group}
    return [points[index] / others[index] if others[index] else 0.0 for index in range(size)]


class PairwiseReward:
    """Copeland score of each completion within the group of completions for its prompt (see the module doc)."""

    __name__ = "pairwise"
    metric = "pairwise_accuracy"

    def __init__(self, judge: Judge, batch_size: int = 8, length_window: float = LENGTH_WINDOW) -> None:
        if length_window < 0:
            raise UserError(f"pairwise_length_window must be at least 0, got {length_window}")
        self.judge = judge
        self.batch_size = batch_size
        self.length_window = length_window

    def prefer_first(self, instructions: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]) -> list[float]:
        """p(first answer better), renormalised over the A and B tokens, with the first answer shown as A."""
        tokenizer = self.judge.tokenizer
        cue = judge_cue(tokenizer)
        prompts = [
            judge_prompt(tokenizer, cue, instruction, a, b)
            for instruction, a, b in zip(instructions, firsts, seconds, strict=True)
        ]
        model = self.judge.model
        was_training = model.training
        model.eval()
        try:
            probabilities = option_probabilities(model, tokenizer, prompts, cue, self.batch_size)
        finally:
            model.train(was_training)
        return [preference(p_a, p_b) for p_a, p_b in probabilities]

    def verdicts(self, instructions: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]) -> list[int]:
        """+1 first better in both orders, -1 second better in both, 0 a tie (the orders disagree)."""
        n = len(firsts)
        shown_first = self.prefer_first([*instructions, *instructions], [*firsts, *seconds], [*seconds, *firsts])
        return [verdict(shown_first[k], 1 - shown_first[n + k]) for k in range(n)]

    def distributed_verdicts(
        self, instructions: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]
    ) -> list[int]:
        """`verdicts` with the comparisons shared out over the processes (every process holds all of them)."""
        state = process_state()
        if state.num_processes == 1:
            return self.verdicts(instructions, firsts, seconds)
        mine = list(range(state.process_index, len(firsts), state.num_processes))
        found = self.verdicts([instructions[k] for k in mine], [firsts[k] for k in mine], [seconds[k] for k in mine])
        merged = dict(gather_object(list(zip(mine, found, strict=True))))
        return [merged[k] for k in range(len(firsts))]

    def group_rewards(
        self, prompts: Sequence[Completion], instructions: Sequence[str], outputs: Sequence[str]
    ) -> list[float]:
        groups = groups_of(prompts)
        pairs = group_pairs(groups, outputs, self.length_window)
        outcomes = self.distributed_verdicts(
            [instructions[i] for i, _ in pairs], [outputs[i] for i, _ in pairs], [outputs[j] for _, j in pairs]
        )
        return copeland(groups, pairs, outcomes, len(outputs))

    def __call__(self, prompts: Sequence[Completion], completions: Sequence[Completion], **columns: Any) -> list:
        instructions = instructions_of(prompts, columns)
        outputs = [message_text(c) for c in completions]
        state = process_state()
        if state.num_processes == 1:
            return self.group_rewards(prompts, instructions, outputs)
        # TRL spreads the completions of one prompt over the processes: the groups are formed from every process's
        # rows (gathered in process order, the same number each), and each process keeps the rewards of its own.
        everything = gather_object([list(zip(prompts, instructions, outputs, strict=True))])
        rows = [row for part in everything for row in part]
        rewards = self.group_rewards(*(list(column) for column in zip(*rows, strict=True)))
        start = state.process_index * len(outputs)
        return rewards[start : start + len(outputs)]


Reward = PointwiseReward | PairwiseReward


@dataclass(frozen=True)
class JudgeAccuracy:
    """A reward judge's measured accuracy: `metric` (auc | pairwise_accuracy) on `rows` rows of `dev_set`."""

    reward: str
    judge: str
    metric: str
    value: float
    dev_set: str
    rows: int

    def describe(self) -> str:
        return f"{self.metric} {self.value:.3f} on {self.dev_set} ({self.rows} rows, chance {CHANCE:.2f})"


def dev_preference_pairs(dev_set: str) -> tuple[list[str], list[str], list[str]]:
    """(instruction, good answer, bad answer) triples: the rows of a preference file (TRL's `prompt` / `chosen` /
    `rejected`: `builtin:pairwise_dev` and its kind), or from a labelled set (instruction, output, label) each good
    row against every bad row of the same instruction."""
    if {"prompt", "chosen", "rejected"}.issubset(load_table(dev_set).column_names):
        rows = load_pairwise_dev(dev_set)
        return [r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows]
    dev = load_dev_set(dev_set)
    good: dict[str, list[str]] = {}
    for row in dev:
        if row["label"]:
            good.setdefault(row["instruction"], []).append(row["output"])
    triples = [
        (row["instruction"], chosen, row["output"])
        for row in dev
        if not row["label"]
        for chosen in good.get(row["instruction"], [])
    ]
    if not triples:
        raise UserError(f"{dev_set} holds no instruction with both a good and a bad answer to compare")
    instructions, chosen, rejected = (list(column) for column in zip(*triples, strict=True))
    return instructions, chosen, rejected


def judge_accuracy(reward: Reward, dev_set: str) -> JudgeAccuracy:
    """A pointwise reward's ROC AUC on a labelled set (instruction, output, label); the pairwise reward's accuracy on
    good-versus-bad pairs (`dev_preference_pairs`): a win in both orders counts 1, a tie half (the length window
    does not apply here)."""
    if isinstance(reward, PairwiseReward):
        instructions, chosen, rejected = dev_preference_pairs(dev_set)
        outcomes = reward.verdicts(instructions, chosen, rejected)
        value = sum((outcome + 1) / 2 for outcome in outcomes) / len(outcomes)
        return JudgeAccuracy(reward.__name__, reward.judge.name, reward.metric, value, dev_set, len(outcomes))
    dev = load_dev_set(dev_set)
    scores = reward.rewards(list(dev["instruction"]), list(dev["output"]), show_progress=True)
    value = roc_auc(scores, list(dev["label"]))
    return JudgeAccuracy(reward.__name__, reward.judge.name, reward.metric, value, dev_set, len(dev))


def check_accuracy(
    accuracy: JudgeAccuracy, minimum: float = MIN_JUDGE_ACCURACY, allow_weak: bool = False
) -> str | None:
    """None when the judge reaches `minimum`; else the refusal, raised unless `allow_weak` (then returned, for the
    card)."""
    if accuracy.value >= minimum:
        return None
    problem = (
        f"reward {accuracy.reward}: its judge {accuracy.judge} has {accuracy.describe()}, under "
        f"min_judge_accuracy {minimum:.2f}"
    )
    if not allow_weak:
        raise UserError(
            f"{problem}: the policy would learn the judge's noise. Choose another judge (judge_model) or reward, "
            "or set allow_weak_judge: true to train anyway (the card records it)."
        )
    return problem
