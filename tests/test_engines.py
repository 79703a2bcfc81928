"""The engine interface on transformers, each method against plain forward passes of the same model, and the choice
of engine (tests/test_vllm.py runs the vLLM engine against this one)."""

import pytest
import torch
from conftest import TEXTS

from humpback_trl import engines, generation
from humpback_trl.chat_template import encode, render
from humpback_trl.configs import EvalArguments, InferenceModelArguments, PreferenceArguments, SamplingConfig
from humpback_trl.engines import TransformersEngine, as_engine, choose_engine, load_engine
from humpback_trl.errors import UserError
from humpback_trl.judges import judge_cue, option_probabilities
from humpback_trl.likelihood import LikelihoodWeights, OutputLogprob, common_prefix_length, encode_rows
from humpback_trl.scoring import score_pairs

GREEDY = SamplingConfig(do_sample=False, max_new_tokens=6)
TOKENS = [5, 17, 42, 99]


def chat_prompts(tokenizer) -> list[str]:
    return [render(tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True) for text in TEXTS[:5]]


def plain_next_token(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)


def test_next_token_logprobs_equal_a_plain_forward_and_run_the_shared_prefix_once(tiny_model, tiny_tokenizer):
    # The chat prompts share their header; the last prompt is plain text, which does not start with it.
    prompts = [*chat_prompts(tiny_tokenizer), TEXTS[6]]
    encoded = [encode(tiny_tokenizer, prompt) for prompt in prompts]
    prefix = encoded[0][: common_prefix_length(encoded[:-1])]
    assert len(prefix) >= 2 and encoded[-1][: len(prefix)] != prefix
    expected = torch.stack([plain_next_token(tiny_model, ids)[TOKENS] for ids in encoded])
    widths = []
    tiny_model.register_forward_pre_hook(lambda _, args, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    engine = TransformersEngine(tiny_model)
    cached = engine.next_token_logprobs(tiny_tokenizer, prompts, TOKENS, prefix_ids=prefix, batch_size=2)
    cached_widths, widths[:] = list(widths), []
    plain = engine.next_token_logprobs(tiny_tokenizer, prompts, TOKENS, batch_size=2)
    assert cached.shape == plain.shape == (len(prompts), len(TOKENS))
    assert torch.allclose(cached, expected, atol=1e-5) and torch.allclose(plain, expected, atol=1e-5)
    # The prefix runs alone first; then 5 chat prompts in batches of 2 after it, and the plain one whole.
    suffix_widths = sorted((len(ids) - len(prefix) for ids in encoded[:-1]), reverse=True)
    assert cached_widths == [len(prefix), *suffix_widths[::2], len(encoded[-1])]
    assert widths == sorted((len(ids) for ids in encoded), reverse=True)[::2]


def test_generate_and_continuations_are_the_transformers_paths(tiny_model, tiny_tokenizer) -> None:
    prompts = chat_prompts(tiny_tokenizer)
    expected = generation.generate(tiny_model, tiny_tokenizer, prompts, GREEDY)
    assert engines.generate(tiny_model, tiny_tokenizer, prompts, GREEDY) == expected
    assert as_engine(tiny_model).generate(tiny_tokenizer, prompts, GREEDY, token_budget=64) == expected
    rows = encode_rows(tiny_tokenizer, ["Name a colour.", "Write a poem."], TEXTS[:2], with_end=True)
    found = as_engine(tiny_model).continuation_logprobs(tiny_tokenizer, rows, batch_size=1)
    for row, logprob in zip(rows, found, strict=True):
        ids = row.prompt + row.output + row.end
        with torch.no_grad():
            every = torch.log_softmax(tiny_model(torch.tensor([ids])).logits[0].double(), dim=-1)
        values = [float(every[p - 1, ids[p]]) for p in range(len(row.prompt), len(ids))]
        assert logprob.n_tokens == len(row.output)
        assert logprob.total == pytest.approx(sum(values[: len(row.output)]), abs=1e-4)
        assert logprob.end == pytest.approx(sum(values[len(row.output) :]), abs=1e-4)


def test_an_engine_stays_itself_and_a_model_becomes_a_transformers_engine(tiny_model) -> None:
    engine = as_engine(tiny_model)
    assert isinstance(engine, TransformersEngine) and engine.model is tiny_model and engine.name == "transformers"
    assert as_engine(engine) is engine


def test_likelihood_with_an_adapter_falls_back_to_transformers_under_auto(tmp_path, monkeypatch) -> None:
    with_adapter = InferenceModelArguments(adapter=str(tmp_path))
    base = InferenceModelArguments(model_name_or_path=str(tmp_path))
    monkeypatch.setattr(engines, "resolve_engine", lambda engine: "vllm" if engine == "auto" else engine)
    assert choose_engine("auto", with_adapter, likelihood=True) == "transformers"
    assert choose_engine("auto", with_adapter) == choose_engine("auto", base, likelihood=True) == "vllm"
    assert choose_engine("transformers", with_adapter, likelihood=True) == "transformers"
    with pytest.raises(UserError, match="judge_engine vllm: likelihood mode with a LoRA adapter fails in vLLM"):
        choose_engine("vllm", with_adapter, likelihood=True, option="judge_engine")


def test_a_loaded_engine_scores_then_gives_its_model_back(tiny_model_dir, tiny_model, tiny_tokenizer) -> None:
    engine = load_engine(InferenceModelArguments(model_name_or_path=str(tiny_model_dir)), "transformers")
    prompts = chat_prompts(tiny_tokenizer)[:2]
    expected = TransformersEngine(tiny_model).next_token_logprobs(tiny_tokenizer, prompts, TOKENS)
    assert torch.allclose(engine.next_token_logprobs(tiny_tokenizer, prompts, TOKENS), expected, atol=1e-6)
    engine.release()
    assert not hasattr(engine, "model")


class ScriptedEngine:
    """An engine whose every answer is fixed, recording what it was asked: the scoring methods need no more."""

    name = "scripted"

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def generate(self, tokenizer, prompts, sampling, **options) -> list[str]:
        self.calls.append(("generate", len(prompts)))
        return ["Short reasoning.\nScore: 4"] * len(prompts)

    def next_token_logprobs(self, tokenizer, prompts, token_ids, **options) -> torch.Tensor:
        self.calls.append(("next_token_logprobs", len(prompts)))
        probabilities = [0.05, 0.05, 0.1, 0.2, 0.4][: len(token_ids)]
        return torch.log(torch.tensor([probabilities] * len(prompts), dtype=torch.float64))

    def continuation_logprobs(self, tokenizer, encoded, **options) -> list[OutputLogprob]:
        self.calls.append(("continuation_logprobs", len(encoded)))
        end = -0.5 if encoded and encoded[0].end else None
        return [OutputLogprob(mean=-1.0 if row.prompt[-1:] != [1] else -2.0, total=0.0, n_tokens=1, end=end)
                for row in encoded]  # fmt: skip

    def release(self) -> None:
        self.calls.append(("release", 0))


def test_every_scoring_mode_runs_on_any_engine_through_the_interface(tiny_tokenizer) -> None:
    pairs = [("Name a colour.", "Red."), ("Write a poem.", "Roses are red.")]
    engine = ScriptedEngine()
    logits = score_pairs(engine, tiny_tokenizer, pairs, mode="logits")
    # Digits 1-5 with probabilities 0.05, 0.05, 0.1, 0.2, 0.4: mass 0.8, expected rating 3.25 / 0.8.
    assert [(r.score, r.argmax, r.mass) for r in logits] == [(pytest.approx(4.0625), 5, pytest.approx(0.8))] * 2
    generated = score_pairs(engine, tiny_tokenizer, pairs, mode="generate")
    assert [(r.score, r.reasoning) for r in generated] == [(4.0, "Short reasoning.\nScore: 4")] * 2
    likely = score_pairs(engine, tiny_tokenizer, pairs, mode="likelihood", likelihood_weights=LikelihoodWeights())
    assert all(r.likelihood is not None and r.likelihood.lp_end == -0.5 for r in likely)
    # One call per pass: the conditional one, then the empty-turn and plain-text ones per distinct output.
    assert engine.calls == [("next_token_logprobs", 2), ("generate", 2), *[("continuation_logprobs", 2)] * 3]
    (p_a, p_b), _ = option_probabilities(engine, tiny_tokenizer, ["x", "y"], judge_cue(tiny_tokenizer), 2)
    assert (p_a, p_b) == (pytest.approx(0.05), pytest.approx(0.05))


def test_evaluation_and_preferences_take_the_engine_option() -> None:
    assert EvalArguments(models=["org/a", "org/b"], engine="vllm").engine == "vllm"
    assert PreferenceArguments(instructions=["org/pairs"], engine="transformers").engine == "transformers"
    with pytest.raises(UserError, match="engine must be one of"):
        EvalArguments(models=["org/a", "org/b"], engine="tpu")
    with pytest.raises(UserError, match="engine must be one of"):
        PreferenceArguments(instructions=["org/pairs"], engine="tpu")
