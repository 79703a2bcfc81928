"""Likelihood signals of a pair under a model: how much the instruction explains the output.

Per (instruction, output) pair, from the model's own forward passes:

- `lp_cond`: mean log-probability per output token with the instruction as the user turn of the model's chat prompt
  (rendered as the forward model is trained and prompted: `SwappedFieldCollator(direction="forward")`);
- `lp_uncond`: the same with an empty user turn, and `lp_prior`: the output as plain text after the document-start
  token (only where IFD is asked for: `LikelihoodWeights.computes_ifd`);
- `lp_end`: the log-probability of the end-of-turn token(s) right after the output (does the answer end there?);
- `pmi = lp_cond - lp_uncond`: per-token pointwise mutual information between instruction and output (relevance);
- `ifd = (-lp_cond) / (-lp_prior)`: Instruction-Following Difficulty, the ratio of mean cross-entropies of the
  answer with and without its instruction (Li et al., NAACL 2024, "From Quantity to Quality"; tianyi-lab/Cherry_LLM;
  Superfiltering scores it with GPT-2). Low IFD: the instruction makes the answer easy.

`lp_uncond` and `lp_prior` depend on the output only, so they are computed once per distinct output (several
instructions per segment share them). The plain-text pass feeds only `lp_prior` and IFD, and at one instruction per
segment it is a third of the work: it runs when IFD weighs in the score or its columns are asked for, else both are
None. Rows of one call share their longest common token prefix (the template's
system block and user header; for `lp_uncond` the whole empty-turn prompt) as one KV cache, as logits-mode scoring
shares its rubric. The rest is the model's own work: every output token goes through the body and the output head,
so rows are batched by length with little padding (`_batches`) and the log-softmax over the vocabulary runs in
cache-sized blocks of positions (`target_logprobs`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import Cache, PreTrainedModel, PreTrainedTokenizerBase

from humpback_trl.chat_template import Message, encode, render, turn_end
from humpback_trl.errors import UserError
from humpback_trl.generation import CACHE_ARGUMENT
from humpback_trl.padding import pad_batch

# A shared prefix shorter than this is not worth a separate forward pass and a cache copy per batch.
MIN_PREFIX_TOKENS = 4
# Positions per block of `target_logprobs`.
LOG_SOFTMAX_POSITIONS = 32
# The most a row is padded in a batch, as a share of the batch's longest row (`_batches`).
MAX_PADDING = 0.0625


@dataclass(frozen=True)
class OutputLogprob:
    """The output's token log-probabilities after one context: `total` over its `n_tokens` tokens, `mean` per token,
    and `end` the summed log-probability of the end-of-turn token(s) right after it (None when not asked for or
    without a chat template)."""

    mean: float
    total: float
    n_tokens: int
    end: float | None


@dataclass(frozen=True)
class EncodedOutput:
    """One row's tokens: the context part (`prompt`), the output's tokens and the end-of-turn tokens after it."""

    prompt: list[int]
    output: list[int]
    end: list[int]


def chat_messages(context: str, system_prompt: str | None = None) -> list[Message]:
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*system, {"role": "user", "content": context}]


def document_start_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token plain text is scored after, so that its first token is predicted too: BOS, else EOS (GPT-2's
    document separator)."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    raise UserError(
        f"The tokenizer of {tokenizer.name_or_path!r} has neither a BOS nor an EOS token to start plain text with."
    )


def encode_output(
    tokenizer: PreTrainedTokenizerBase,
    context: str | None,
    output: str,
    *,
    template_kwargs: dict[str, Any] | None = None,
    system_prompt: str | None = None,
) -> EncodedOutput:
    """Tokens of `output` after `context` as the user turn (None: plain text after the document-start token).

    The assistant turn is cut from the template's own rendering of the conversation (some templates trim or rewrite
    the content), and the joint text is tokenized at once, as generation produces it; only when a merge crosses the
    boundary are the parts tokenized separately (as the training collator does).
    """
    if not output:
        raise UserError("An output to score is empty; there is no token to take the log-probability of.")
    if context is None:
        return EncodedOutput([document_start_id(tokenizer)], encode(tokenizer, output), [])
    kwargs = template_kwargs or {}
    messages = chat_messages(context, system_prompt)
    prompt_text = render(tokenizer, messages, add_generation_prompt=True, **kwargs)
    full_text = render(tokenizer, [*messages, {"role": "assistant", "content": output}], **kwargs)
    end = turn_end(tokenizer)
    if not full_text.startswith(prompt_text) or not full_text.endswith(end.suffix):
        raise UserError(
            f"The chat template of {tokenizer.name_or_path!r} does not render the generation prompt as a prefix of "
            f"the conversation, or does not end the assistant turn with {end.suffix!r}; cannot locate the output."
        )
    content = full_text[len(prompt_text) : len(full_text) - len(end.suffix)]
    prompt_ids = encode(tokenizer, prompt_text)
    with_content = encode(tokenizer, prompt_text + content)
    with_end = encode(tokenizer, prompt_text + content + end.close)
    if with_content[: len(prompt_ids)] == prompt_ids and with_end[: len(with_content)] == with_content:
        return EncodedOutput(prompt_ids, with_content[len(prompt_ids) :], with_end[len(with_content) :])
    return EncodedOutput(prompt_ids, encode(tokenizer, content), encode(tokenizer, end.close))


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    first = rows[0]
    length = min(len(row) for row in rows)
    for row in rows[1:]:
        position = 0
        while position < length and row[position] == first[position]:
            position += 1
        length = position
    return length


def pad_id_of(tokenizer: PreTrainedTokenizerBase) -> int:
    # Right padding is never attended to by a real token, so any id works when the tokenizer defines none.
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


@contextmanager
def scoring_pass(model: PreTrainedModel, rows: int, desc: str, show_progress: bool) -> Iterator[tqdm]:
    """Eval mode without autograd for one pass over `rows` rows, and its progress bar; the model's mode is restored
    after, as the SelfCurationCallback scores the model it is training."""
    was_training = model.training
    model.eval()
    bar = tqdm(total=rows, desc=desc, unit="row", disable=not show_progress)
    try:
        with torch.inference_mode():
            yield bar
    finally:
        bar.close()
        model.train(was_training)


def prefix_kv(model: PreTrainedModel, prefix_ids: Sequence[int]) -> Cache:
    """The KV cache of one forward pass over the tokens the rows share, which every batch then copies."""
    # use_cache explicitly: training with gradient checkpointing leaves config.use_cache False.
    output = model(input_ids=torch.tensor([list(prefix_ids)], device=model.device), use_cache=True, logits_to_keep=1)
    return getattr(output, CACHE_ARGUMENT)


def batch_inputs(
    rows: Sequence[list[int]], pad_id: int, device: torch.device, prefix: tuple[int, Cache] | None = None
) -> dict[str, Any]:
    """The model's keyword arguments for right-padded `rows`, on `device`.

    With `prefix` = (prefix length, its KV cache), the rows are what follows that prefix: a fresh copy of the cache is
    expanded to the batch (forward appends to it), positions continue after the prefix and the attention mask covers
    prefix + rows.
    """
    input_ids, mask = pad_batch(rows, pad_id, "right")
    offset, cache = 0, None
    if prefix is not None:
        offset, kv = prefix
        cache = copy.deepcopy(kv)
        cache.batch_repeat_interleave(len(rows))
        mask = torch.cat([torch.ones((len(rows), offset), dtype=torch.long), mask], dim=1)
    positions = torch.arange(offset, offset + input_ids.shape[1], dtype=torch.long).expand(len(rows), -1)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": mask.to(device),
        "position_ids": positions.to(device),
        CACHE_ARGUMENT: cache,
    }


def token_logprobs(
    model: PreTrainedModel,
    rows: Sequence[list[int]],
    starts: Sequence[int],
    pad_id: int,
    prefix: tuple[int, Cache] | None = None,
) -> list[torch.Tensor]:
    """Per row, the log-probabilities of its tokens from `starts[i]` on, each given the tokens before it.

    Rows are right-padded; every start is at least 1 (the first token has nothing to be predicted from). With
    `prefix` = (prefix length, KV cache), the rows are what follows that prefix (`batch_inputs`). Only the last
    positions any row needs are turned into logits.
    """
    inputs = batch_inputs(rows, pad_id, model.device, prefix)
    width = inputs["input_ids"].shape[1]
    keep = width - (min(starts) - 1)
    logits = model(**inputs, use_cache=prefix is not None, logits_to_keep=keep).logits
    first_kept = width - keep
    result = []
    for row, (ids, start) in enumerate(zip(rows, starts, strict=True)):
        # Logit at position p predicts token p + 1; positions start - 1 .. len - 2 predict the scored tokens.
        span = logits[row, start - 1 - first_kept : len(ids) - 1 - first_kept]
        targets = torch.tensor(ids[start:], dtype=torch.long, device=span.device)
        result.append(target_logprobs(span, targets).cpu())
    return result


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[i, targets[i]] for each position i, in float32.

    LOG_SOFTMAX_POSITIONS positions at a time: such a [positions, vocab] block stays in the CPU cache between the
    log-softmax and the gather, where one over every position is memory-bound (on SmolLM2's 49k vocabulary, 400
    positions: 62 ms as gather minus logsumexp, 16 ms in blocks of 32).
    """
    step = LOG_SOFTMAX_POSITIONS
    return torch.cat(
        [
            torch.log_softmax(logits[i : i + step].float(), dim=-1).gather(-1, targets[i : i + step, None])[:, 0]
            for i in range(0, len(targets), step)
        ]
    )


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Length-sorted batches of at most `batch_size` rows, a row joining only while padding it to the batch's longest
    row costs at most MAX_PADDING of that width: every padded position also runs through the output head, and a
    pool's length-sorted neighbours are near equal, so full batches still form where there are many rows."""
    batches: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True):
        batch = batches[-1] if batches else []
        if batch and len(batch) < batch_size and lengths[index] >= (1 - MAX_PADDING) * lengths[batch[0]]:
            batch.append(index)
        else:
            batches.append([index])
    return batches


def logprobs_of_encoded(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    encoded: Sequence[EncodedOutput],
    *,
    batch_size: int = 8,
    prefix_cache: bool = True,
    show_progress: bool = False,
    desc: str = "Likelihood",
) -> list[OutputLogprob]:
    """`OutputLogprob` of each encoded row (`end` filled where the row carries end tokens)."""
    if not encoded:
        return []
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    full = [row.prompt + row.output + row.end for row in encoded]
    # The prefix stops before each row's last context token, so every row keeps a token to predict its output from.
    shared = common_prefix_length(full) if prefix_cache and len(full) > 1 else 0
    shared = min(shared, *(len(row.prompt) - 1 for row in encoded))
    pad_id = pad_id_of(tokenizer)
    results: list[OutputLogprob | None] = [None] * len(encoded)
    with scoring_pass(model, len(encoded), desc, show_progress) as bar:
        prefix = None
        if shared >= MIN_PREFIX_TOKENS:
            prefix = (shared, prefix_kv(model, full[0][:shared]))
        else:
            shared = 0
        rows = [ids[shared:] for ids in full]
        for batch in _batches([len(ids) for ids in rows], batch_size):
            starts = [len(encoded[i].prompt) - shared for i in batch]
            scored = token_logprobs(model, [rows[i] for i in batch], starts, pad_id, prefix)
            for index, values in zip(batch, scored, strict=True):
                results[index] = summary(values, len(encoded[index].output), bool(encoded[index].end))
            bar.update(len(batch))
    return results


def summary(values: torch.Tensor, n_output: int, has_end: bool) -> OutputLogprob:
    """An `OutputLogprob` from the log-probabilities of the output's tokens followed by its end tokens."""
    output = values[:n_output].double()
    total = float(output.sum())
    end = float(values[n_output:].double().sum()) if has_end else None
    return OutputLogprob(mean=total / n_output, total=total, n_tokens=n_output, end=end)


def output_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[str | None],
    outputs: Sequence[str],
    *,
    batch_size: int = 8,
    template_kwargs: dict | None = None,
    with_end: bool = False,
    system_prompt: str | None = None,
    prefix_cache: bool = True,
    show_progress: bool = False,
) -> list[OutputLogprob]:
    """Per (context, output): the output's token log-probabilities with the context as the user turn of the model's
    chat prompt ("" an empty user turn, None the output as plain text). `end` is the log-probability of the
    end-of-turn token(s) right after the output when `with_end` (None for plain text)."""
    encoded = encode_rows(
        tokenizer, contexts, outputs, with_end=with_end, template_kwargs=template_kwargs, system_prompt=system_prompt
    )
    return logprobs_of_encoded(
        model, tokenizer, encoded, batch_size=batch_size, prefix_cache=prefix_cache, show_progress=show_progress
    )


def encode_rows(
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[str | None],
    outputs: Sequence[str],
    *,
    with_end: bool = False,
    template_kwargs: dict | None = None,
    system_prompt: str | None = None,
) -> list[EncodedOutput]:
    """`encode_output` of each (context, output), errors naming the row; end tokens only `with_end`."""
    if len(contexts) != len(outputs):
        raise ValueError(f"{len(contexts)} contexts but {len(outputs)} outputs")
    encoded = []
    for row, (context, output) in enumerate(zip(contexts, outputs, strict=True)):
        try:
            item = encode_output(
                tokenizer, context, output, template_kwargs=template_kwargs, system_prompt=system_prompt
            )
        except ValueError as error:
            raise UserError(f"Row {row}: {error}") from error
        encoded.append(item if with_end else EncodedOutput(item.prompt, item.output, []))
    return encoded


@dataclass(frozen=True)
class LikelihoodWeights:
    """The combined score: `pmi * pmi + end * lp_end + cond * lp_cond - ifd * ifd`; `with_ifd` computes `lp_prior`
    and IFD (the plain-text pass) although their weight is 0.

    Defaults chosen on builtin:dev (168 pairs, instruction checks first) with base SmolLM2-135M-Instruct, from a grid
    over the four weights: relevance (PMI), completeness (the end-of-turn term) and fluency (lp_cond) gave ROC AUC
    0.926; PMI + 0.1 lp_end 0.900; PMI alone 0.754 (it favours a truncated answer), lp_end alone 0.872, IFD alone
    0.753; the rubric in logits mode 0.760 (recipes/quickstart/curate.yaml gives the per-kind figures). Chosen on the
    set it is measured on: expect lower on other data, and calibrate per model."""

    pmi: float = 1.0
    end: float = 0.2
    cond: float = 0.5
    ifd: float = 0.0
    with_ifd: bool = False

    @property
    def computes_ifd(self) -> bool:
        return self.with_ifd or self.ifd != 0.0

    def combine(self, lp_cond: float, lp_end: float, pmi: float, ifd: float | None) -> float:
        score = self.pmi * pmi + self.end * lp_end + self.cond * lp_cond
        return score - self.ifd * ifd if ifd is not None else score


@dataclass(frozen=True)
class PairLikelihood:
    lp_cond: float
    lp_uncond: float
    lp_prior: float | None
    lp_end: float
    pmi: float
    ifd: float | None
    score: float

    def as_fields(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in LIKELIHOOD_COLUMNS}


LIKELIHOOD_COLUMNS: tuple[str, ...] = ("lp_cond", "lp_uncond", "lp_prior", "lp_end", "pmi", "ifd", "score")


def ifd_ratio(lp_cond: float, lp_prior: float) -> float:
    """Cherry's IFD: the answer's mean cross-entropy with the instruction over its mean cross-entropy alone."""
    if lp_prior == 0.0:
        return math.inf if lp_cond < 0.0 else 1.0
    return lp_cond / lp_prior


def combine(
    cond: Sequence[OutputLogprob],
    uncond: Sequence[OutputLogprob],
    prior: Sequence[OutputLogprob | None],
    weights: LikelihoodWeights,
) -> list[PairLikelihood]:
    """The pair features from the passes (each in pair order; `cond` carries the end term; `prior` None where the
    plain-text pass did not run)."""
    pairs = []
    for c, u, p in zip(cond, uncond, prior, strict=True):
        pmi = c.mean - u.mean
        lp_prior = p.mean if p is not None else None
        ifd = ifd_ratio(c.mean, lp_prior) if lp_prior is not None else None
        score = weights.combine(c.mean, c.end, pmi, ifd)
        pairs.append(PairLikelihood(c.mean, u.mean, lp_prior, c.end, pmi, ifd, score))
    return pairs


def distinct(outputs: Sequence[str]) -> tuple[list[str], list[int]]:
    """The distinct outputs in first-seen order, and each input's index among them."""
    index: dict[str, int] = {}
    for output in outputs:
        index.setdefault(output, len(index))
    return list(index), [index[output] for output in outputs]


def likelihood_features(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    instructions: Sequence[str],
    outputs: Sequence[str],
    *,
    weights: LikelihoodWeights = LikelihoodWeights(),
    batch_size: int = 8,
    template_kwargs: dict | None = None,
    system_prompt: str | None = None,
    prefix_cache: bool = True,
    show_progress: bool = False,
) -> list[PairLikelihood]:
    """`PairLikelihood` of each (instruction, output) pair; the output-only passes run once per distinct output."""
    kwargs = {
        "batch_size": batch_size,
        "template_kwargs": template_kwargs,
        "system_prompt": system_prompt,
        "prefix_cache": prefix_cache,
        "show_progress": show_progress,
    }

    def passes(contexts: list[str | None], texts: list[str], with_end: bool) -> list[OutputLogprob]:
        return output_logprobs(model, tokenizer, contexts, texts, with_end=with_end, **kwargs)

    return features_from(passes, instructions, outputs, weights)


Passes = Callable[[list, list, bool], list[OutputLogprob]]


def features_from(
    passes: Passes, instructions: Sequence[str], outputs: Sequence[str], weights: LikelihoodWeights
) -> list[PairLikelihood]:
    """The passes through any engine's `passes(contexts, outputs, with_end)`: the conditional one per pair, the
    empty-turn one per distinct output, and the plain-text one per distinct output where `weights.computes_ifd`."""
    cond = passes(list(instructions), list(outputs), True)
    unique, where = distinct(outputs)
    uncond = passes([""] * len(unique), unique, False)
    prior = passes([None] * len(unique), unique, False) if weights.computes_ifd else [None] * len(unique)
    return combine(cond, [uncond[i] for i in where], [prior[i] for i in where], weights)
