"""Self-curation: the forward model rates each candidate (instruction, output) pair 1-5 (Li et al. 2024, 2.3).

The prompt is the paper's rubric (Table 1 / Table 19) as the user turn, with the generated instruction and the
output appended. Two modes:

- "generate" (the paper's): the model writes a brief reasoning and "Score: <rating>"; `parse_score` reads it.
  Peer reproductions lost 45-67% of pairs to unparseable or out-of-range scores here (REFERENCE.md, section 2).
- "logits": one forward pass per pair on the prompt followed by the cue "Score:", skipping the reasoning; the score
  is the expectation of the rating under the model's next-token distribution over the digits 1-5. It always yields
  a score, and ranks pairs instead of tying them on five values. The rubric is the same for every pair, so its KV
  cache is computed once and shared by every batch.

- "likelihood": no rubric; the forward model's own likelihoods of the output with and without the instruction
  (`humpback_trl.likelihood`: PMI, the end-of-turn term, IFD), combined into one score with no 1-5 scale.

Every mode runs on the `humpback_trl.engines` interface, so one implementation scores on a model in memory or on
vLLM: a model passed in is scored with the transformers engine.

A5 keeps score >= 4.5 (the paper's definition; 5 in generate mode where scores are integers) and A4 keeps >= 4. In
likelihood mode the score is a log-probability difference: curation selects by fractions of the pool there, and 0
(the instruction makes its output no more likely) is the absolute default.

Prompt styles (`prompt_style`): "verbatim" is the paper's rubric; "score-only" drops its last sentence ("first
provide a brief reasoning ... then write Score: <rating>"), which contradicts logits mode's cue: there the rating is
read at once after "Score:". Generate mode always uses the verbatim rubric, since it does reason first.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from humpback_trl.chat_template import Message, encode, render
from humpback_trl.configs import SamplingConfig
from humpback_trl.engines import Engine, as_engine, generate
from humpback_trl.engines import split_at_prefix as split_at_prefix  # public: where a prompt leaves the shared prefix
from humpback_trl.errors import UserError
from humpback_trl.likelihood import (
    LIKELIHOOD_COLUMNS,
    LikelihoodWeights,
    OutputLogprob,
    PairLikelihood,
    encode_rows,
    features_from,
)
from humpback_trl.tagging import INFERENCE_SOURCES, Tagging

Mode = Literal["logits", "generate", "likelihood"]
MODES: tuple[str, ...] = ("logits", "generate", "likelihood")
PromptStyle = Literal["verbatim", "score-only"]
PROMPT_STYLES: tuple[str, ...] = ("verbatim", "score-only")

RUBRIC = (
    "Below is an instruction from an user and a candidate answer. Evaluate whether or not the answer is a good "
    "example of how AI Assistant should respond to the user's instruction. Please assign a score using the following "
    "5-point scale:\n"
    "1: It means the answer is incomplete, vague, off-topic, controversial, or not exactly what the user asked for. "
    "For example, some content seems missing, numbered list does not start from the beginning, the opening sentence "
    "repeats user's question. Or the response is from another person's perspective with their personal experience "
    "(e.g. taken from blog posts), or looks like an answer from a forum. Or it contains promotional text, navigation "
    "text, or other irrelevant information.\n"
    "2: It means the answer addresses most of the asks from the user. It does not directly address the user's "
    "question. For example, it only provides a high-level methodology instead of the exact solution to user's "
    "question.\n"
    "3: It means the answer is helpful but not written by an AI Assistant. It addresses all the basic asks from the "
    "user. It is complete and self contained with the drawback that the response is not written from an AI "
    "assistant's perspective, but from other people's perspective. The content looks like an excerpt from a blog "
    "post, web page, or web search results. For example, it contains personal experience or opinion, mentions "
    "comments section, or share on social media, etc.\n"
    "4: It means the answer is written from an AI assistant's perspective with a clear focus of addressing the "
    "instruction. It provide a complete, clear, and comprehensive response to user's question or instruction without "
    "missing or irrelevant information. It is well organized, self-contained, and written in a helpful tone. It has "
    "minor room for improvement, e.g. more concise and focused.\n"
    "5: It means it is a perfect answer from an AI Assistant. It has a clear focus on being a helpful AI Assistant, "
    "where the response looks like intentionally written to address the user's question or instruction without any "
    "irrelevant sentences. The answer provides high quality content, demonstrating expert knowledge in the area, is "
    "very well written, logical, easy-to-follow, engaging and insightful.\n"
    "\n"
    'Please first provide a brief reasoning you used to derive the rating score, and then write "Score: <rating>" '
    "in the last line."
)

_REASON_FIRST = "\n\nPlease first provide a brief reasoning"
RUBRIC_SCORE_ONLY = RUBRIC[: RUBRIC.index(_REASON_FIRST)]
RUBRICS: dict[str, str] = {"verbatim": RUBRIC, "score-only": RUBRIC_SCORE_ONLY}

SCORE_CUE = "Score:"
DIGITS = ("1", "2", "3", "4", "5")
DEFAULT_THRESHOLDS: dict[str, float] = {"logits": 4.5, "generate": 5, "likelihood": 0.0}
A4_THRESHOLD = 4.0
GENERATE_SAMPLING = SamplingConfig(do_sample=False, max_new_tokens=256)
# Instruction openings that differ in their first character's class (letter, digit, punctuation, space, newline).
_PREFIX_PROBES = ("Write", "how", "2", '"', " x", "\nx")

_SCORE_LABEL = re.compile(r"\bscore[ \t]*:", re.IGNORECASE)
# One digit 1-5, optionally in markdown emphasis and optionally written "/5"; a digit, or "." "," "/" followed by a
# digit, right after it means another number ("10", "4.5", "4/10"), which is rejected rather than truncated.
_SCORE_VALUE = re.compile(r"[ \t]*(\*{1,2}|_{1,2})?[ \t]*([1-5])(?:/5)?(?![.,/]?\d)")


def check_prompt_style(style: str) -> None:
    if style not in RUBRICS:
        raise UserError(f"curation_prompt must be one of {PROMPT_STYLES}, got {style!r}")


def curation_prompt(instruction: str, output: str, style: PromptStyle = "verbatim") -> str:
    """The rubric, a blank line, then the instruction and the output on the next line (paper Table 19)."""
    check_prompt_style(style)
    return f"{RUBRICS[style]}\n\n{instruction}\n{output}"


def curation_messages(
    instruction: str, output: str, tagging: Tagging | None = None, style: PromptStyle = "verbatim"
) -> list[Message]:
    """The single user turn that asks for a rating; `tagging` appends the inference tags, as in `humpback chat`."""
    prompt = curation_prompt(instruction, output, style)
    if tagging is not None:
        prompt = tagging.apply(prompt, INFERENCE_SOURCES)
    return [{"role": "user", "content": prompt}]


def parse_score(text: str) -> int | None:
    """The rating a generated curation reply states, or None.

    Rule: take the LAST occurrence of "score" + optional spaces + ":" (case-insensitive, "score" as a word, so
    "Score:", "score :", "Final score:" count but "a score of 5" does not). After it, on the same line, there must be
    a single digit 1-5, optionally wrapped in markdown emphasis ("**4**", "*4*") and optionally written as "4/5".
    The value must stand alone: "10", "91", "0", "4.5", "4,5", "4/10" all give None, as does a last "Score:" with
    no valid value even when an earlier one had one. Anything may follow the value ("Score: 4\\nThanks", "4.").
    """
    labels = list(_SCORE_LABEL.finditer(text))
    if not labels:
        return None
    value = _SCORE_VALUE.match(text, labels[-1].end())
    return int(value.group(2)) if value else None


@dataclass
class ScoreResult:
    """`score` in [1, 5] (None when generate mode found no parseable score, or the pair failed an instruction
    check); `argmax` the most likely (logits) or stated (generate) rating; `mass` the probability the model put on
    the five digit tokens (logits mode only); `reasoning` the generated reply (generate mode only); `likelihood` the
    likelihood features (likelihood mode only: `score` is their combination)."""

    score: float | None
    argmax: int | None
    mass: float | None
    reasoning: str | None
    likelihood: PairLikelihood | None = None

    def as_fields(self) -> dict[str, float | int | str | None]:
        """The curation columns of the pair schema (`pairs.PAIR_FEATURES`) this result fills."""
        return {"score": self.score, "score_argmax": self.argmax, "score_mass": self.mass, "reasoning": self.reasoning}

    def likelihood_fields(self) -> dict[str, float | None]:
        """The likelihood columns of a scored pool (`LIKELIHOOD_FIELDS`; None outside likelihood mode)."""
        values = self.likelihood.as_fields() if self.likelihood is not None else {}
        return {name: values.get(name) for name in LIKELIHOOD_FIELDS}


# The scored pool's likelihood columns beside `score` (which holds their combination in likelihood mode).
LIKELIHOOD_FIELDS: tuple[str, ...] = tuple(name for name in LIKELIHOOD_COLUMNS if name != "score")
DEFAULT_WEIGHTS = LikelihoodWeights()


def result_from_likelihood(features: PairLikelihood) -> ScoreResult:
    return ScoreResult(score=features.score, argmax=None, mass=None, reasoning=None, likelihood=features)


@dataclass(frozen=True)
class ScoreCue:
    """What follows the generation prompt (`text`) and the token ids of each option ("1".."5" for a score, "A"/"B"
    for a pairwise verdict) right after it."""

    text: str
    digit_ids: tuple[int, ...]


def _next_option_ids(
    tokenizer: PreTrainedTokenizerBase, context: str, cue: str, gap: str, options: Sequence[str]
) -> tuple[tuple[int, ...] | None, str]:
    prompt = context + cue
    base = encode(tokenizer, prompt)
    found = []
    for option in options:
        ids = encode(tokenizer, prompt + gap + option)
        if ids[: len(base)] != base or len(ids) != len(base) + 1:
            tokens = tokenizer.convert_ids_to_tokens(ids[len(base) - 1 :])
            return None, f"{cue + gap + option!r} ends in tokens {tokens}"
        found.append(ids[-1])
    if len(set(found)) != len(options):
        return None, f"the options {list(options)} share token ids {found}"
    return tuple(found), ""


def option_cue(tokenizer: PreTrainedTokenizerBase, context: str, cue: str, options: Sequence[str]) -> ScoreCue:
    """Find each option's token by encoding a real prompt + cue + option and reading the one token added.

    The cue followed by a " 4" token is preferred: where the tokenizer has space-digit (space-letter) tokens, that is
    how the model writes the answer, and a prompt ending in a lone space token would be text it never produced.
    Tokenizers that split the space from the digit (Qwen2.5, Llama-3, SentencePiece) get the cue with a trailing
    space and bare option tokens.
    """
    problems = []
    for text, gap in ((cue, " "), (cue + " ", "")):
        ids, problem = _next_option_ids(tokenizer, context, text, gap, options)
        if ids is not None:
            return ScoreCue(text, ids)
        problems.append(problem)
    raise UserError(
        f"Reading the answer from next-token probabilities needs each of {list(options)} to be one token after "
        f"{cue!r} (with or without a space), but for {tokenizer.name_or_path!r}: {'; '.join(problems)}."
    )


def score_cue(tokenizer: PreTrainedTokenizerBase) -> ScoreCue:
    """The "Score:" cue and the tokens of the digits 1-5 after it (`option_cue` on a real curation prompt)."""
    context = render(tokenizer, curation_messages("Hi", "Hello"), add_generation_prompt=True)
    try:
        return option_cue(tokenizer, context, SCORE_CUE, DIGITS)
    except ValueError as error:
        raise UserError(f"Logits scoring: {error} Use mode='generate' with this tokenizer.") from error


def logits_prompt(
    tokenizer: PreTrainedTokenizerBase,
    instruction: str,
    output: str,
    cue: ScoreCue,
    tagging: Tagging | None = None,
    style: PromptStyle = "verbatim",
) -> str:
    """The generation prompt with the assistant turn opened by the score cue, so the next token is the rating."""
    messages = curation_messages(instruction, output, tagging, style)
    return render(tokenizer, messages, add_generation_prompt=True) + cue.text


def rubric_prefix_ids(
    tokenizer: PreTrainedTokenizerBase, tagging: Tagging | None = None, style: PromptStyle = "verbatim"
) -> list[int]:
    """The tokens every curation prompt starts with (system block, user header, rubric).

    Taken as the longest common token prefix of prompts whose instructions start differently, not by encoding the
    text before the instruction: the last tokens of that text can merge with what follows (GPT-2-style tokenizers
    split "\\n\\n" before a letter into two tokens, Qwen's merges ".\\n\\n\\n"). Every pair is still checked
    against it (`split_at_prefix`).
    """
    encodings = [
        encode(tokenizer, render(tokenizer, curation_messages(probe, "x", tagging, style), add_generation_prompt=True))
        for probe in _PREFIX_PROBES
    ]
    length = 0
    while all(len(ids) > length and ids[length] == encodings[0][length] for ids in encodings):
        length += 1
    return encodings[0][:length]


def result_from_digit_logprobs(digit_logprobs: torch.Tensor) -> list[ScoreResult]:
    """Per row, from the log-probabilities (over the whole vocabulary) of the five digits: the expected rating under
    the distribution renormalised over the digits, its argmax, and the unrenormalised digit mass."""
    weights = torch.softmax(digit_logprobs, dim=-1)
    scores = weights @ torch.arange(1, len(DIGITS) + 1, dtype=weights.dtype, device=weights.device)
    # exp(logsumexp): the mass without underflow to 0/0.
    mass = torch.exp(torch.logsumexp(digit_logprobs, dim=-1))
    argmax = weights.argmax(dim=-1) + 1
    return [
        ScoreResult(score=float(s), argmax=int(a), mass=float(m), reasoning=None)
        for s, a, m in zip(scores.tolist(), argmax.tolist(), mass.tolist(), strict=True)
    ]


def score_logits(
    model: Engine | PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 8,
    prefix_cache: bool = True,
    show_progress: bool = False,
    tagging: Tagging | None = None,
    prompt_style: PromptStyle = "verbatim",
) -> list[ScoreResult]:
    """Score (instruction, output) pairs from the digits' next-token log-probabilities after the cue; results in the
    input order. With `prefix_cache` the rubric every prompt starts with is offered to the engine as a shared
    prefix (the transformers engine runs it once)."""
    cue = score_cue(tokenizer)
    prompts = [logits_prompt(tokenizer, i, o, cue, tagging, prompt_style) for i, o in pairs]
    if not prompts:
        return []
    prefix = rubric_prefix_ids(tokenizer, tagging, prompt_style) if prefix_cache else []
    logprobs = as_engine(model).next_token_logprobs(
        tokenizer, prompts, cue.digit_ids, prefix_ids=prefix, batch_size=batch_size, show_progress=show_progress,
        desc="Scoring (logits)",
    )  # fmt: skip
    return result_from_digit_logprobs(logprobs)


def generate_prompts(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]], tagging: Tagging | None = None
) -> list[str]:
    """Generate mode's rendered prompts: the verbatim rubric, which asks for a reasoning first."""
    return [render(tokenizer, curation_messages(i, o, tagging), add_generation_prompt=True) for i, o in pairs]


def results_from_replies(replies: Sequence[str]) -> list[ScoreResult]:
    """Generate mode's results: each reply `parse_score`d, kept as the reasoning."""
    scores = [parse_score(reply) for reply in replies]
    return [
        ScoreResult(score=None if score is None else float(score), argmax=score, mass=None, reasoning=reply)
        for score, reply in zip(scores, replies, strict=True)
    ]


def score_generate(
    model: Engine | PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    sampling: SamplingConfig = GENERATE_SAMPLING,
    token_budget: int = 16384,
    show_progress: bool = False,
    tagging: Tagging | None = None,
) -> list[ScoreResult]:
    """The paper's curation: generate a reasoning and "Score: <rating>", then `parse_score` it."""
    replies = generate(
        model,
        tokenizer,
        generate_prompts(tokenizer, pairs, tagging),
        sampling,
        token_budget=token_budget,
        show_progress=show_progress,
        desc="Scoring (generate)",
    )
    return results_from_replies(replies)


def score_likelihood(
    model: Engine | PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 8,
    prefix_cache: bool = True,
    show_progress: bool = False,
    tagging: Tagging | None = None,
    weights: LikelihoodWeights = DEFAULT_WEIGHTS,
) -> list[ScoreResult]:
    """Likelihood mode: the instruction is the user turn as the forward model is prompted (with the inference tags
    when `tagging` is on, as in `humpback chat`); the passes of `likelihood.features_from` run on the engine."""
    engine = as_engine(model)
    instructions = [tagging.apply(i, INFERENCE_SOURCES) if tagging is not None else i for i, _ in pairs]

    def passes(contexts: list[str | None], texts: list[str], with_end: bool) -> list[OutputLogprob]:
        encoded = encode_rows(tokenizer, contexts, texts, with_end=with_end)
        return engine.continuation_logprobs(
            tokenizer, encoded, batch_size=batch_size, prefix_cache=prefix_cache, show_progress=show_progress
        )

    features = features_from(passes, instructions, [o for _, o in pairs], weights)
    return [result_from_likelihood(f) for f in features]


def score_pairs(
    model: Engine | PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    mode: Mode = "logits",
    batch_size: int = 8,
    prefix_cache: bool = True,
    sampling: SamplingConfig = GENERATE_SAMPLING,
    token_budget: int = 16384,
    show_progress: bool = False,
    tagging: Tagging | None = None,
    prompt_style: PromptStyle = "verbatim",
    likelihood_weights: LikelihoodWeights = DEFAULT_WEIGHTS,
) -> list[ScoreResult]:
    """Dispatch on `mode`: `batch_size` and `prefix_cache` apply to logits and likelihood mode, `prompt_style` to
    logits mode, `sampling` and `token_budget` to generate mode (which always uses the verbatim rubric: it does write
    a reasoning first), `likelihood_weights` to likelihood mode."""
    check_prompt_style(prompt_style)
    if mode == "logits":
        return score_logits(model, tokenizer, pairs, batch_size, prefix_cache, show_progress, tagging, prompt_style)
    if mode == "generate":
        return score_generate(model, tokenizer, pairs, sampling, token_budget, show_progress, tagging)
    if mode == "likelihood":
        return score_likelihood(
            model, tokenizer, pairs, batch_size, prefix_cache, show_progress, tagging, likelihood_weights
        )
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
