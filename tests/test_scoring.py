import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import REAL_TOKENIZERS, TEXTS, real_tokenizer_path  # noqa: E402
from datasets import Dataset  # noqa: E402
from tokenizers import normalizers  # noqa: E402
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from humpback_trl import scoring  # noqa: E402
from humpback_trl.callbacks import SelfCurationCallback  # noqa: E402
from humpback_trl.chat_template import encode  # noqa: E402
from humpback_trl.curation import CurationSettings  # noqa: E402
from humpback_trl.pairs import PAIR_FEATURES, make_pair  # noqa: E402
from humpback_trl.scoring import (  # noqa: E402
    DEFAULT_THRESHOLDS,
    RUBRIC,
    ScoreResult,
    curation_messages,
    logits_prompt,
    parse_score,
    rubric_prefix_ids,
    score_cue,
    score_generate,
    score_logits,
    score_pairs,
    split_at_prefix,
)
from humpback_trl.tagging import SEED_TAG, WEB_TAG, Tagging  # noqa: E402
from humpback_trl.tiny import build_model, build_tokenizer  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "REFERENCE.md"

PAIRS = [
    ("Explain how photosynthesis works.", TEXTS[1] + " " + TEXTS[0]),
    ("Write a poem about the sea.", TEXTS[2]),
    ("How do I bake bread?", " ".join(TEXTS[:5])),
    ("what is the capital of France", TEXTS[6]),
    ("\nList three Python collections.", TEXTS[4] + "\n" + TEXTS[3]),
]


@pytest.fixture(scope="module")
def rubric_tokenizer():
    """Trained on the rubric too, so prompts stay short; its " 4" is one token (the cue without a trailing space)."""
    return build_tokenizer(TEXTS + [RUBRIC], vocab_size=1000)


@pytest.fixture(scope="module")
def rubric_model(rubric_tokenizer):
    model = build_model(rubric_tokenizer, seed=0)
    # Sharper next-token distributions than at init, so pairs get clearly different scores to compare.
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
    return model


def by_hand(model, tokenizer, instruction: str, output: str) -> tuple[float, int, float]:
    """Score from a plain unbatched forward: softmax over the full vocabulary at the last position."""
    cue = score_cue(tokenizer)
    ids = torch.tensor([encode(tokenizer, logits_prompt(tokenizer, instruction, output, cue))])
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids).logits[0, -1].double(), dim=-1)
    digits = probs[list(cue.digit_ids)]
    weights = digits / digits.sum()
    score = float((weights * torch.arange(1, 6, dtype=torch.double)).sum())
    return score, int(weights.argmax()) + 1, float(digits.sum())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is fine.", None),
        ("", None),
        ("Score: 10", None),
        ("Score: 91", None),
        ("Score: 0", None),
        ("Score: 4.5", None),
        ("Score: 4,5", None),
        ("Score: 4/10", None),
        ("Score: -3", None),
        ("Score: five", None),
        ("Score: 4/5", 4),
        ("Score: 3", 3),
        ("score: 3", 3),
        ("SCORE : 2", 2),
        ("Score: **4**", 4),
        ("**Score:** 5", 5),
        ("Reasoning first.\nScore: 4\nThanks for asking!", 4),
        ("Score: 4. The answer is good.", 4),
        ("Score: 2\nOn reflection, it is better.\nScore: 5", 5),
        ("Score: 5\nActually no.\nScore: 10", None),
        ("I would give it a score of 5 because it is perfect.", None),
        ("I would give it a score of 5.\nScore: 3", 3),
        ("Score:\n4", None),
        ("Subscore: 4", None),
    ],
)
def test_parse_score(text: str, expected: int | None) -> None:
    assert parse_score(text) == expected


def test_rubric_is_verbatim_from_reference() -> None:
    if not REFERENCE.is_file():
        pytest.skip("../shared/REFERENCE.md not found (it lives beside the checkout)")
    text = REFERENCE.read_text(encoding="utf-8")
    start = text.index("    Below is an instruction")
    end = text.index("in the last line.", start) + len("in the last line.")
    lines = [line.removeprefix("    ") for line in text[start:end].split("\n")]
    assert "\n".join(lines) == RUBRIC


def test_curation_messages_layout() -> None:
    assert curation_messages("Q?", "A.") == [{"role": "user", "content": RUBRIC + "\n\nQ?\nA."}]
    tagged = curation_messages("Q?", "A.", Tagging())[0]["content"]
    assert tagged == RUBRIC + "\n\nQ?\nA.\n\n" + SEED_TAG + " " + WEB_TAG


def test_thresholds_follow_the_paper() -> None:
    # Likelihood mode has no 1-5 scale: 0 (the instruction makes its output no more likely) is its absolute default.
    assert DEFAULT_THRESHOLDS == {"logits": 4.5, "generate": 5, "likelihood": 0.0}
    assert scoring.A4_THRESHOLD == 4


def test_cue_without_space_when_space_digit_is_one_token(rubric_tokenizer) -> None:
    cue = score_cue(rubric_tokenizer)
    assert cue.text == "Score:"
    assert [rubric_tokenizer.decode([i]) for i in cue.digit_ids] == [" 1", " 2", " 3", " 4", " 5"]


def test_cue_error_when_a_digit_is_not_one_token() -> None:
    tokenizer = build_tokenizer(TEXTS, vocab_size=300)
    tokenizer.backend_tokenizer.normalizer = normalizers.Replace("4", "4\u00e9")
    with pytest.raises(ValueError, match="one token"):
        score_cue(tokenizer)


@pytest.mark.parametrize("name", REAL_TOKENIZERS)
def test_real_tokenizers_digits_and_shared_prefix(name: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(real_tokenizer_path(name))
    cue = score_cue(tokenizer)
    assert cue.text in ("Score:", "Score: ")
    assert [tokenizer.decode([i]).strip() for i in cue.digit_ids] == ["1", "2", "3", "4", "5"]
    prefix = rubric_prefix_ids(tokenizer)
    assert RUBRIC[:-40] in tokenizer.decode(prefix)
    encoded = [encode(tokenizer, logits_prompt(tokenizer, i, o, cue)) for i, o in PAIRS]
    assert all(suffix is not None for suffix in split_at_prefix(prefix, encoded))


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_logits_scores_match_a_hand_computation(rubric_tokenizer, rubric_model, prefix_cache: bool) -> None:
    results = score_logits(
        rubric_model, rubric_tokenizer, PAIRS, batch_size=2, prefix_cache=prefix_cache, show_progress=False
    )
    for (instruction, output), result in zip(PAIRS, results, strict=True):
        score, argmax, mass = by_hand(rubric_model, rubric_tokenizer, instruction, output)
        assert 1 <= result.score <= 5
        assert result.score == pytest.approx(score, abs=1e-4)
        assert result.mass == pytest.approx(mass, rel=1e-3)
        assert result.argmax == argmax
        assert result.reasoning is None


def test_prefix_cache_agrees_with_plain_forward(rubric_tokenizer, rubric_model) -> None:
    pairs = PAIRS * 2
    cached = score_logits(rubric_model, rubric_tokenizer, pairs, batch_size=3, show_progress=False)
    plain = score_logits(rubric_model, rubric_tokenizer, pairs, batch_size=4, prefix_cache=False, show_progress=False)
    assert [r.score for r in cached] == pytest.approx([r.score for r in plain], abs=1e-4)
    assert [r.argmax for r in cached] == [r.argmax for r in plain]


def test_pairs_that_break_the_prefix_fall_back_to_a_plain_forward(rubric_tokenizer, rubric_model, monkeypatch) -> None:
    # A "prefix" that runs into the first pair's instruction: pairs starting differently must not use the cache.
    cue = score_cue(rubric_tokenizer)
    shared = rubric_prefix_ids(rubric_tokenizer)
    longer = encode(rubric_tokenizer, logits_prompt(rubric_tokenizer, *PAIRS[0], cue))[: len(shared) + 2]
    encoded = [encode(rubric_tokenizer, logits_prompt(rubric_tokenizer, i, o, cue)) for i, o in PAIRS]
    uses_cache = [s is not None for s in split_at_prefix(longer, encoded)]
    assert any(uses_cache) and not all(uses_cache)
    monkeypatch.setattr(scoring, "rubric_prefix_ids", lambda *_: longer)
    mixed = score_logits(rubric_model, rubric_tokenizer, PAIRS, batch_size=2, show_progress=False)
    monkeypatch.undo()
    plain = score_logits(rubric_model, rubric_tokenizer, PAIRS, prefix_cache=False, show_progress=False)
    assert [r.score for r in mixed] == pytest.approx([r.score for r in plain], abs=1e-4)


def test_logits_mode_restores_training_mode(rubric_tokenizer, rubric_model) -> None:
    rubric_model.train()
    score_logits(rubric_model, rubric_tokenizer, PAIRS[:2], show_progress=False)
    assert rubric_model.training
    rubric_model.eval()


def test_real_qwen_tokenizer_with_a_tiny_qwen2() -> None:
    tokenizer = AutoTokenizer.from_pretrained(real_tokenizer_path("qwen2.5-instruct"))
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config)
    cue = score_cue(tokenizer)
    assert cue.text == "Score: "
    assert tokenizer.convert_ids_to_tokens(list(cue.digit_ids)) == ["1", "2", "3", "4", "5"]
    cached = score_logits(model, tokenizer, PAIRS, batch_size=3, show_progress=False)
    plain = score_logits(model, tokenizer, PAIRS, batch_size=3, prefix_cache=False, show_progress=False)
    assert all(1 <= r.score <= 5 and 0 < r.mass <= 1 for r in cached)
    assert [r.score for r in cached] == pytest.approx([r.score for r in plain], abs=1e-4)
    score, _, _ = by_hand(model, tokenizer, *PAIRS[0])
    assert cached[0].score == pytest.approx(score, abs=1e-4)


def test_generate_mode_parses_each_reply(rubric_tokenizer, rubric_model, monkeypatch) -> None:
    replies = ["Clear and complete.\nScore: 4", "It rambles.", "Score: 10"]
    seen = {}

    def fake_generate(model, tokenizer, prompts, sampling, **kwargs):
        seen["prompts"], seen["sampling"] = prompts, sampling
        return replies

    monkeypatch.setattr(scoring, "generate", fake_generate)
    results = score_generate(rubric_model, rubric_tokenizer, PAIRS[:3], show_progress=False)
    assert results == [
        ScoreResult(score=4.0, argmax=4, mass=None, reasoning=replies[0]),
        ScoreResult(score=None, argmax=None, mass=None, reasoning=replies[1]),
        ScoreResult(score=None, argmax=None, mass=None, reasoning=replies[2]),
    ]
    assert seen["sampling"].do_sample is False
    assert seen["prompts"][0].endswith("<|im_start|>assistant\n")
    assert PAIRS[0][0] + "\n" + PAIRS[0][1] in seen["prompts"][0]


def test_generate_mode_end_to_end(rubric_tokenizer, rubric_model) -> None:
    results = score_pairs(
        rubric_model,
        rubric_tokenizer,
        PAIRS[:2],
        mode="generate",
        sampling=scoring.SamplingConfig(do_sample=False, max_new_tokens=4),
        show_progress=False,
    )
    assert len(results) == 2
    # Each result is exactly what parse_score reads from the generated reply, which is kept as the reasoning.
    for result in results:
        parsed = scoring.parse_score(result.reasoning)
        assert (result.argmax, result.score, result.mass) == (parsed, None if parsed is None else float(parsed), None)


def test_score_pairs_dispatch(rubric_tokenizer, rubric_model) -> None:
    logits = score_pairs(rubric_model, rubric_tokenizer, PAIRS[:1], mode="logits", show_progress=False)
    assert logits[0].mass is not None
    assert logits[0].as_fields()["score_argmax"] == logits[0].argmax
    likelihood = score_pairs(rubric_model, rubric_tokenizer, PAIRS[:2], mode="likelihood", show_progress=False)
    assert [r.mass for r in likelihood] == [None, None] and all(r.likelihood is not None for r in likelihood)
    assert [r.score for r in likelihood] == [r.likelihood.score for r in likelihood]
    assert set(likelihood[0].likelihood_fields()) == {"lp_cond", "lp_uncond", "lp_prior", "lp_end", "pmi", "ifd"}
    assert logits[0].likelihood_fields() == dict.fromkeys(("lp_cond", "lp_uncond", "lp_prior", "lp_end", "pmi", "ifd"))
    with pytest.raises(ValueError, match="mode"):
        score_pairs(rubric_model, rubric_tokenizer, PAIRS[:1], mode="vibes")


def test_lora_wrapped_model_with_prefix_cache(rubric_tokenizer) -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        build_model(rubric_tokenizer, seed=1), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    )
    cached = score_logits(model, rubric_tokenizer, PAIRS, batch_size=2, show_progress=False)
    plain = score_logits(model, rubric_tokenizer, PAIRS, batch_size=2, prefix_cache=False, show_progress=False)
    assert [r.score for r in cached] == pytest.approx([r.score for r in plain], abs=1e-4)


def test_score_only_rubric_drops_the_reason_first_sentence() -> None:
    assert scoring.RUBRIC_SCORE_ONLY + "\n\n" + RUBRIC.split("\n\n")[-1] == RUBRIC
    assert RUBRIC.split("\n\n")[-1].startswith("Please first provide a brief reasoning")
    assert scoring.RUBRIC_SCORE_ONLY.endswith("engaging and insightful.")
    assert curation_messages("Q?", "A.", style="score-only") == [
        {"role": "user", "content": scoring.RUBRIC_SCORE_ONLY + "\n\nQ?\nA."}
    ]
    with pytest.raises(ValueError, match="curation_prompt must be one of"):
        curation_messages("Q?", "A.", style="short")


def test_prompt_style_changes_logits_scores_but_not_generate_mode(rubric_tokenizer, rubric_model, monkeypatch) -> None:
    verbatim = score_logits(rubric_model, rubric_tokenizer, PAIRS, show_progress=False)
    short = score_logits(rubric_model, rubric_tokenizer, PAIRS, show_progress=False, prompt_style="score-only")
    plain = score_logits(
        rubric_model, rubric_tokenizer, PAIRS, prefix_cache=False, show_progress=False, prompt_style="score-only"
    )
    assert [r.score for r in short] == pytest.approx([r.score for r in plain], abs=1e-4)
    assert [r.score for r in short] != pytest.approx([r.score for r in verbatim], abs=1e-4)
    seen = []
    monkeypatch.setattr(scoring, "generate", lambda model, tokenizer, prompts, *a, **k: seen.append(prompts) or [""])
    for style in ("verbatim", "score-only"):
        score_pairs(rubric_model, rubric_tokenizer, PAIRS[:1], mode="generate", prompt_style=style)
    assert seen[0] == seen[1] and "Please first provide a brief reasoning" in seen[0][0]


def test_self_curation_pushes_private_splits_with_a_private_card(rubric_model, rubric_tokenizer, tmp_path, monkeypatch):
    pushed = []
    monkeypatch.setattr(
        "humpback_trl.stage.push_dataset", lambda data, card, repo, private: pushed.append((repo, private))
    )
    rows = [make_pair(i, o, "augmented", str(n)) for n, (i, o) in enumerate(PAIRS)]
    callback = SelfCurationCallback(
        Dataset.from_list(rows, features=PAIR_FEATURES),
        tmp_path,
        CurationSettings(calibration_dev_set=None),
        hub_repo="me/curated-1",
        private=True,
    )
    callback.on_train_end(
        SimpleNamespace(output_dir=str(tmp_path)), None, None, model=rubric_model, processing_class=rubric_tokenizer
    )
    assert pushed == [("me/curated-1", True)]
    assert "**Visibility on the Hub**: private" in (tmp_path / "README.md").read_text()
    assert callback.summary["candidates"] == len(PAIRS)
