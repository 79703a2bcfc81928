"""The judges as GRPO rewards: each matches an independent computation, the Copeland counts are exact, and a judge at
chance is refused."""

import json
import math

import pytest
import torch
from conftest import TEXTS, launch_cpu_processes

from humpback_trl.calibration import load_dev_set
from humpback_trl.chat_template import encode, render, turn_end
from humpback_trl.errors import UserError
from humpback_trl.judges import JUDGE_PROMPT
from humpback_trl.likelihood import LikelihoodWeights, encode_output
from humpback_trl.rewards import (
    Judge,
    LikelihoodReward,
    PairwiseReward,
    PointwiseReward,
    RubricReward,
    check_accuracy,
    comparable,
    dev_preference_pairs,
    judge_accuracy,
)
from humpback_trl.scoring import DIGITS, RUBRIC, SCORE_CUE
from humpback_trl.tiny import build_model, build_tokenizer

INSTRUCTIONS = ["Explain how photosynthesis works.", "Write a poem about the sea."]
ANSWERS = [TEXTS[1], TEXTS[2] + " " + TEXTS[0], TEXTS[3], TEXTS[4][:30]]


@pytest.fixture(scope="module")
def judge():
    tokenizer = build_tokenizer(TEXTS + [RUBRIC, JUDGE_PROMPT], vocab_size=1000)
    model = build_model(tokenizer, seed=0)
    with torch.no_grad():  # sharper distributions than at init, so answers get clearly different rewards
        model.lm_head.weight.mul_(30)
    return Judge("tiny", model.eval(), tokenizer)


@pytest.fixture(scope="module")
def soft_judge(judge):
    """The same tiny model at its initial scale: log-probabilities summed over many tokens stay within float32's
    reach of 1e-5 (the sharpened head amplifies rounding)."""
    return Judge("tiny-soft", build_model(judge.tokenizer, seed=0).eval(), judge.tokenizer)


def conversational(instruction: str, answer: str) -> tuple[list[dict], list[dict]]:
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": instruction}]
    return prompt, [{"role": "assistant", "content": answer}]


def next_token_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)


def plain_rubric(judge: Judge, instruction: str, answer: str) -> float:
    """The expected rating from one full forward pass of the score-only rubric prompt, no cache, no batch."""
    tokenizer = judge.tokenizer
    user = RUBRIC.split("\n\nPlease first")[0] + f"\n\n{instruction}\n{answer}"
    prompt = render(tokenizer, [{"role": "user", "content": user}], add_generation_prompt=True) + SCORE_CUE
    digits = [encode(tokenizer, prompt + " " + d)[-1] for d in DIGITS]
    logprobs = next_token_logprobs(judge.model, encode(tokenizer, prompt))[-1, digits]
    return float(torch.softmax(logprobs, dim=0) @ torch.arange(1, 6, dtype=torch.float64))


def mean_logprob(model, context: list[int], tokens: list[int]) -> float:
    logprobs = next_token_logprobs(model, context + tokens)
    return sum(float(logprobs[len(context) + k - 1, token]) for k, token in enumerate(tokens)) / len(tokens)


def plain_likelihood(judge: Judge, instruction: str, answer: str) -> float:
    """The combined likelihood score with the default weights, each term from one full forward pass: PMI (answer
    after the instruction minus after an empty turn), the end-of-turn log-probability, lp_cond and IFD (lp_cond over
    the answer's mean log-probability as plain text after the document-start token)."""
    model, tokenizer = judge.model, judge.tokenizer
    cond = encode_output(tokenizer, instruction, answer)
    uncond = encode_output(tokenizer, "", answer)
    logprobs = next_token_logprobs(model, cond.prompt + cond.output + cond.end)
    start = len(cond.prompt) + len(cond.output)
    end = sum(float(logprobs[start + k - 1, token]) for k, token in enumerate(cond.end))
    lp_cond = mean_logprob(model, cond.prompt, cond.output)
    pmi = lp_cond - mean_logprob(model, uncond.prompt, uncond.output)
    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    lp_prior = mean_logprob(model, [start_id], encode(tokenizer, answer))
    weights = LikelihoodWeights()
    return weights.pmi * pmi + weights.end * end + weights.cond * lp_cond - weights.ifd * lp_cond / lp_prior


def test_rubric_reward_matches_a_plain_forward_pass_in_both_formats(judge) -> None:
    reward = RubricReward(judge, batch_size=3)
    prompts = [INSTRUCTIONS[i % 2] for i in range(len(ANSWERS))]
    expected = [plain_rubric(judge, p, a) for p, a in zip(prompts, ANSWERS, strict=True)]
    assert max(expected) - min(expected) > 1e-3
    standard = reward(prompts=prompts, completions=ANSWERS)
    chats = [conversational(p, a) for p, a in zip(prompts, ANSWERS, strict=True)]
    chat = reward(prompts=[c[0] for c in chats], completions=[c[1] for c in chats])
    assert standard == pytest.approx(expected, abs=1e-5)
    assert chat == pytest.approx(expected, abs=1e-5)


def test_likelihood_reward_matches_a_plain_forward_pass(soft_judge) -> None:
    judge = soft_judge
    reward = LikelihoodReward(judge, batch_size=2)
    prompts = [INSTRUCTIONS[i % 2] for i in range(len(ANSWERS))]
    expected = [plain_likelihood(judge, p, a) for p, a in zip(prompts, ANSWERS, strict=True)]
    chats = [conversational(p, a) for p, a in zip(prompts, ANSWERS, strict=True)]
    got = reward(prompts=[c[0] for c in chats], completions=[c[1] for c in chats])
    assert got == pytest.approx(expected, abs=1e-5)
    assert turn_end(judge.tokenizer).close and LikelihoodWeights().end  # the end-of-turn term is part of the sum


def test_the_instruction_column_is_what_the_judge_reads(judge) -> None:
    """The policy's prompt carries tags and a system prompt; the judge sees the instruction column when given."""
    reward = RubricReward(judge)
    tagged = [conversational(INSTRUCTIONS[0] + "\n\nAnswer in the style of an AI Assistant.", a)[0] for a in ANSWERS]
    with_column = reward(prompts=tagged, completions=ANSWERS, instruction=[INSTRUCTIONS[0]] * len(ANSWERS))
    assert with_column == pytest.approx(reward(prompts=[INSTRUCTIONS[0]] * len(ANSWERS), completions=ANSWERS))


def test_an_empty_answer_has_no_likelihood_reward(soft_judge) -> None:
    judge = soft_judge
    got = LikelihoodReward(judge)(prompts=INSTRUCTIONS, completions=["", ANSWERS[0]])
    assert got[0] is None
    assert got[1] == pytest.approx(plain_likelihood(judge, INSTRUCTIONS[1], ANSWERS[0]), abs=1e-5)


class StubPairwise(PairwiseReward):
    """p(first better) from a rule on the texts, recording every (first, second) it was shown."""

    def __init__(self, rule, length_window: float = 0.2) -> None:
        super().__init__(Judge("stub", None, None), length_window=length_window)
        self.rule = rule
        self.shown: list[tuple[str, str]] = []

    def prefer_first(self, instructions, firsts, seconds):
        self.shown += list(zip(firsts, seconds, strict=True))
        return [self.rule(a, b) for a, b in zip(firsts, seconds, strict=True)]


def more_bangs(a: str, b: str) -> float:
    return 0.9 if a.count("!") > b.count("!") else (0.1 if a.count("!") < b.count("!") else 0.5)


def test_pairwise_copeland_counts_both_orders_and_the_length_window() -> None:
    # Group "q": a (10 chars, 3 bangs), b (10, 1 bang), c (11, 0 bangs), d (20 chars: outside everyone's window),
    # e identical to b (ties without a verdict). Group "r": two answers, one better.
    a, b, c, d = "aaaaaa!!!x", "bbbbbbbb!x", "ccccccccccc", "d" * 19 + "!"
    r1, r2 = "rrrr!", "sss!!"
    prompts = ["q"] * 5 + ["r"] * 2
    reward = StubPairwise(more_bangs)
    got = reward(prompts=prompts, completions=[a, b, c, d, b, r1, r2])
    # a beats b, c, e(=b): 3 wins of 4 others; b beats c, loses to a: 0; c loses to a, b, e: -3; d judged by nobody.
    assert got == [3 / 4, 0.0, -3 / 4, 0.0, 0.0, -1.0, 1.0]
    judged = {frozenset(pair) for pair in reward.shown}
    assert judged == {frozenset(p) for p in [(a, b), (a, c), (b, c), (r1, r2)]}
    # Six comparisons (a-b, a-c, b-c, a-e, c-e, r1-r2), each shown in both orders.
    assert len(reward.shown) == 2 * 6
    assert (a, b) in reward.shown and (b, a) in reward.shown


def test_a_position_biased_judge_gives_no_wins() -> None:
    """A judge that always prefers the answer shown first disagrees with itself across the two orders: all ties."""
    reward = StubPairwise(lambda first, second: 0.9)
    assert reward(prompts=["q"] * 3, completions=["one!", "two!!", "six!!!"]) == [0.0, 0.0, 0.0]


def test_length_window_bounds() -> None:
    assert comparable("x" * 10, "x" * 12, 0.2)
    assert not comparable("x" * 10, "x" * 13, 0.2)
    assert StubPairwise(more_bangs, length_window=1.0)(prompts=["q", "q"], completions=["x!", "xxx"]) == [1.0, -1.0]


def test_pairwise_preference_matches_a_plain_forward_pass(judge) -> None:
    reward = PairwiseReward(judge, batch_size=2)
    firsts, seconds = [ANSWERS[0], ANSWERS[2]], [ANSWERS[1], ANSWERS[3]]
    got = reward.prefer_first(INSTRUCTIONS, firsts, seconds)
    tokenizer = judge.tokenizer
    for instruction, a, b, value in zip(INSTRUCTIONS, firsts, seconds, got, strict=True):
        user = JUDGE_PROMPT.format(instruction=instruction, a=a, b=b)
        prompt = render(tokenizer, [{"role": "user", "content": user}], add_generation_prompt=True)
        prompt += "Better response:"
        options = [encode(tokenizer, prompt + " " + letter)[-1] for letter in "AB"]
        p_a, p_b = next_token_logprobs(judge.model, encode(tokenizer, prompt))[-1, options].exp().tolist()
        assert value == pytest.approx(p_a / (p_a + p_b), abs=1e-5)


class StubPointwise(PointwiseReward):
    __name__ = "stub"

    def __init__(self, rule) -> None:
        super().__init__(Judge("stub-judge", None, None))
        self.rule = rule

    def score(self, instructions, outputs, show_progress=False):
        return [self.rule(instruction, output) for instruction, output in zip(instructions, outputs, strict=True)]


def test_a_looping_completion_gets_less_than_every_other_one() -> None:
    # The stub likes long answers, as a likelihood judge likes repetition: the loop would win without the rule.
    reward = StubPointwise(lambda i, o: float(len(o)))
    outputs = ["Paris.", "The capital is Paris. " * 3, "It is Paris, on the Seine.", ""]
    assert reward(prompts=["q"] * 4, completions=outputs) == [6.0, -1.0, 26.0, 0.0]  # the lowest (0) minus 1
    assert reward(prompts=["q"] * 2, completions=outputs[:1] + outputs[2:3]) == [6.0, 26.0]  # no loop: unchanged


def test_a_judge_at_chance_is_refused_naming_its_figure() -> None:
    accuracy = judge_accuracy(StubPointwise(lambda i, o: 3.0), "builtin:dev")
    assert (accuracy.metric, accuracy.value, accuracy.rows) == ("auc", 0.5, len(load_dev_set("builtin:dev")))
    with pytest.raises(
        UserError,
        match=r"reward stub: its judge stub-judge has auc 0\.500 on builtin:dev .*under "
        r"min_judge_accuracy 0\.60",
    ):
        check_accuracy(accuracy)
    assert "auc 0.500" in check_accuracy(accuracy, allow_weak=True)


def test_a_judge_that_knows_the_answers_passes() -> None:
    """A stub that knows builtin:dev's good (instruction, answer) pairs has AUC 1 and is accepted."""
    dev = load_dev_set("builtin:dev")
    good = {(row["instruction"], row["output"]) for row in dev if row["label"]}
    accuracy = judge_accuracy(StubPointwise(lambda i, o: float((i, o) in good)), "builtin:dev")
    assert accuracy.value == 1.0
    assert check_accuracy(accuracy) is None


def pairs_in_labelled_set(name: str) -> int:
    """Bad rows of a labelled set whose instruction also has a good row: each is compared with that good answer."""
    dev = load_dev_set(name)
    good = {row["instruction"] for row in dev if row["label"]}
    return sum(1 for row in dev if not row["label"] and row["instruction"] in good)


@pytest.mark.parametrize("dev_set", ["builtin:pairwise_dev", "builtin:dev"])
def test_pairwise_accuracy_counts_both_orders_and_ties_half(dev_set: str) -> None:
    """On the bundled preference pairs (140), or builtin:dev's good answers against the bad answers to the same
    instruction: a position-biased judge ties everything (0.5 exactly); one that prefers the longer answer is right
    exactly where the good answer is the longer one."""
    rows = 140 if dev_set == "builtin:pairwise_dev" else pairs_in_labelled_set(dev_set)
    biased = judge_accuracy(StubPairwise(lambda first, second: 0.9), dev_set)
    assert (biased.metric, biased.value, biased.rows) == ("pairwise_accuracy", 0.5, rows)
    longer = judge_accuracy(StubPairwise(lambda a, b: 0.9 if len(a) > len(b) else 0.1), dev_set)
    _, chosen, rejected = dev_preference_pairs(dev_set)
    expected = sum(len(c) > len(r) for c, r in zip(chosen, rejected, strict=True)) / len(chosen)
    assert math.isclose(longer.value, expected)
    assert 0.0 < expected < 1.0


# Run under two processes: each holds its slice of one batch whose groups span both (as TRL spreads a prompt's
# completions), judges its share of the comparisons and writes its rewards and what it judged.
TWO_PROCESSES = """
import json, sys
from accelerate import PartialState
from humpback_trl.rewards import Judge, PairwiseReward

class Stub(PairwiseReward):
    def prefer_first(self, instructions, firsts, seconds):
        return [0.9 if a.count("!") > b.count("!") else 0.1 for a, b in zip(firsts, seconds)]

state = PartialState(cpu=True)
prompts = {prompts}
answers = {answers}
n = len(prompts) // state.num_processes
mine = slice(state.process_index * n, (state.process_index + 1) * n)
reward = Stub(Judge("stub", None, None), length_window=1.0)
shown = []
original = reward.prefer_first
reward.prefer_first = lambda i, f, s: shown.extend(zip(f, s)) or original(i, f, s)
rewards = reward(prompts=prompts[mine], completions=answers[mine])
with open(sys.argv[1] + f"/rank-{{state.process_index}}.json", "w") as handle:
    json.dump({{"rewards": rewards, "shown": shown}}, handle)
state.destroy_process_group()
"""


def test_groups_spread_over_processes_get_the_single_process_rewards(tmp_path):
    prompts = ["q", "q", "r", "q", "r", "r"]
    answers = ["a!", "b!!", "c!", "d", "e!!", "f"]
    script = tmp_path / "two.py"
    script.write_text(TWO_PROCESSES.format(prompts=prompts, answers=answers))
    launch = launch_cpu_processes(str(script), str(tmp_path), timeout=240)
    assert launch.returncode == 0, launch.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    single = StubPairwise(more_bangs, length_window=1.0)
    assert ranks[0]["rewards"] + ranks[1]["rewards"] == single(prompts=prompts, completions=answers)
    # Each comparison, in both orders, judged by exactly one of the two processes.
    shown = [tuple(pair) for rank in ranks for pair in rank["shown"]]
    assert sorted(shown) == sorted(single.shown) and ranks[0]["shown"] and ranks[1]["shown"]
