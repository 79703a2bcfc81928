"""A tiny random Llama with a real byte-level BPE tokenizer and a ChatML template, built locally.

Unit tests and the demo's smoke option (`humpback demo --model builtin:tiny-llama`) name it `builtin:tiny-llama`, so
the whole pipeline runs on a CPU in seconds with no download. Its weights are random: what it generates is noise,
which is all the plumbing needs. The quickstart itself runs on a real model (humpback_trl.builtin_models).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

TINY_MODEL = "builtin:tiny-llama"
BUILD_VERSION = "2"
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts`: any string encodes, and every digit is a single token."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )


def build_model(
    tokenizer: PreTrainedTokenizerFast, seed: int = 0, hidden_size: int = 64, layers: int = 2
) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        # The final RMSNorm bounds the hidden state, so with the usual 0.02 the logits of a 64-wide model stay
        # within about +-1 and no LoRA can lower the loss visibly; 0.1 lets a quickstart show learning.
        initializer_range=0.1,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _seed_texts() -> list[str]:
    from humpback_trl.pairs import builtin_path

    rows = [json.loads(line) for line in builtin_path("seed").read_text(encoding="utf-8").splitlines() if line]
    return [text for row in rows for text in (row["instruction"], row["output"])]


def tiny_model_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Build the tiny model once per cache (keyed by the bundled seed text) and return its folder.

    Several accelerate processes may call this at once: each builds into a private temp folder and renames it into
    place, so a reader never sees a half-written model.
    """
    texts = _seed_texts()
    digest = hashlib.sha256("\n".join([BUILD_VERSION, *texts]).encode()).hexdigest()[:12]
    root = Path(cache_dir or os.environ.get("HUMPBACK_CACHE", Path.home() / ".cache" / "humpback_trl"))
    target = root / f"tiny-llama-{digest}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-llama-", dir=root))
    tokenizer = build_tokenizer(texts)
    tokenizer.save_pretrained(staging)
    build_model(tokenizer).save_pretrained(staging)
    try:
        os.rename(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another process finished first
    return target
