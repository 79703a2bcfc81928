"""The real model behind the quickstart, SmolLM2-135M-Instruct (`builtin:smollm2-135m-instruct`): its conversion
reloads as a normal folder, it answers, and self-curation's logits mode behaves on it as it must on a real model.

The folder is converted once and shared (tests/conftest.py, `smollm2_dir`); the model is loaded once per module.
"""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from humpback_trl.builtin_models import GGUF_MODELS, SMOLLM2, converted_folder
from humpback_trl.chat_template import render
from humpback_trl.generation import SamplingConfig, generate
from humpback_trl.pairs import builtin_path
from humpback_trl.scoring import score_logits

NAVIGATION = (
    "Home | About us | Contact | Log in | Subscribe to our newsletter for the latest deals! | Privacy policy | "
    "Terms of service | Cookie settings | Follow us on Facebook, Twitter and Instagram | (c) 2024 All rights reserved."
)
SHORT_PAIRS = [
    (
        "How do I reverse a list in Python?",
        "Use the list's reverse() method to reverse it in place: `numbers.reverse()`. To get a reversed copy and "
        "keep the original, slice it with a step of -1: `reversed_numbers = numbers[::-1]`.",
    ),
    (
        "Give me three tips for sleeping better.",
        "1. Go to bed and get up at the same time every day. 2. Keep your bedroom dark, quiet and cool. 3. Avoid "
        "caffeine in the afternoon and screens in the hour before bed.",
    ),
]
# Bundled seed pairs (photosynthesis, weather vs climate, inflation), first 800 characters of each answer. With the
# paper's verbatim rubric this 135M judge separates answers from boilerplate only weakly (on 9 pairs tried, 6 won,
# by 0.04-0.6 points); these three won by 0.16-0.6, a gap a working logits path must keep.
SEED_IDS = ("seed-0001", "seed-0003", "seed-0006")


def seed_pairs() -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in builtin_path("seed").read_text(encoding="utf-8").splitlines() if line]
    return [(row["instruction"], row["output"][:800]) for row in rows if row["id"] in SEED_IDS]


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    return model, tokenizer


def test_the_builtin_name_resolves_to_a_converted_folder_that_reloads(smollm2_dir, smollm2):
    model, tokenizer = smollm2
    assert smollm2_dir.name == converted_folder(SMOLLM2, GGUF_MODELS[SMOLLM2], smollm2_dir.parent).name
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config  # a plain float32 folder, not a GGUF-quantized one
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"]) == (30, 9, 3)
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == model.generation_config.pad_token_id == tokenizer.eos_token_id
    rendered = render(tokenizer, [{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_a_greedy_answer_names_the_capital(smollm2):
    model, tokenizer = smollm2
    prompt = render(tokenizer, [{"role": "user", "content": "What is the capital of France?"}], True)
    (answer,) = generate(model, tokenizer, [prompt], SamplingConfig(do_sample=False, max_new_tokens=24))
    assert "Paris" in answer


def test_logits_scores_agree_with_and_without_the_prefix_cache(smollm2):
    model, tokenizer = smollm2
    cached = score_logits(model, tokenizer, SHORT_PAIRS, batch_size=2, prefix_cache=True, show_progress=False)
    plain = score_logits(model, tokenizer, SHORT_PAIRS, batch_size=2, prefix_cache=False, show_progress=False)
    for with_cache, without in zip(cached, plain, strict=True):
        assert with_cache.score == pytest.approx(without.score, abs=1e-4)
        assert with_cache.mass == pytest.approx(without.mass, abs=1e-4)
        # After "Score:" a real model puts most of its next-token probability on a rating.
        assert with_cache.mass > 0.5


def test_a_real_answer_scores_above_navigation_boilerplate(smollm2):
    model, tokenizer = smollm2
    pairs = seed_pairs()
    assert len(pairs) == len(SEED_IDS)
    real = score_logits(model, tokenizer, pairs, batch_size=3, show_progress=False)
    boilerplate = score_logits(model, tokenizer, [(i, NAVIGATION) for i, _ in pairs], batch_size=3, show_progress=False)
    for pair, good, bad in zip(pairs, real, boilerplate, strict=True):
        assert good.score > bad.score, (pair[0], good.score, bad.score)
