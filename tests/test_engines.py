"""The engine interface on transformers, each method against plain forward passes of the same model; the choice of
engine; the stages that score through the interface alone, on a scripted engine (tests/test_vllm.py runs the vLLM
engine against the transformers one)."""

import json

import pytest
import torch
from conftest import TEXTS
from datasets import Dataset

from humpback_trl import engines, generation, rewrite
from humpback_trl.chat_template import encode, render
from humpback_trl.configs import (
    CurationSettings,
    EvalArguments,
    InferenceModelArguments,
    PreferenceArguments,
    RewriteArguments,
    SamplingConfig,
)
from humpback_trl.engines import TransformersEngine, as_engine, choose_engine, load_engine
from humpback_trl.errors import UserError
from humpback_trl.judges import judge_cue, option_probabilities
from humpback_trl.likelihood import LikelihoodWeights, OutputLogprob, common_prefix_length, encode_rows
from humpback_trl.pairs import make_pair
from humpback_trl.scoring import score_pairs
from humpback_trl.scripts import calibrate

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
    weights = LikelihoodWeights(with_ifd=True)
    likely = score_pairs(engine, tiny_tokenizer, pairs, mode="likelihood", likelihood_weights=weights)
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


class PromptLengthEngine(ScriptedEngine):
    """A scripted engine whose continuation log-probability is minus the prompt's length in hundredths: a longer
    user turn (the source in it) gives a lower figure, exactly."""

    def continuation_logprobs(self, tokenizer, encoded, **options) -> list[OutputLogprob]:
        self.calls.append(("continuation_logprobs", len(encoded)))
        return [OutputLogprob(mean=-len(row.prompt) / 100, total=0.0, n_tokens=len(row.output), end=None)
                for row in encoded]  # fmt: skip


def test_rewrite_checks_measure_and_score_through_the_engine_of_curation_engine(
    tmp_path, tiny_model_dir, tiny_tokenizer, monkeypatch
) -> None:
    engine, asked = PromptLengthEngine(), []
    monkeypatch.setattr(rewrite, "load_engine", lambda args, name: asked.append(name) or engine)
    rows = [
        {**make_pair("When did the bridge open?", "It opened in 1999.", "augmented", "a"), "rewrite": "In 1999."},
        {**make_pair("Name a prime.", "Seven is prime.", "augmented", "b"), "rewrite": " "},
    ]
    generated = Dataset.from_list(rows, features=rewrite.GENERATED_FEATURES)
    args = RewriteArguments(pairs="unused", output_dir=str(tmp_path), shard_size=2)
    settings = CurationSettings(curation_engine="vllm", calibration_dev_set=None, instruction_checks=[])
    model_args = InferenceModelArguments(model_name_or_path=str(tiny_model_dir))
    checked = rewrite.check_rewrites(generated, args, model_args, settings, {}).to_list()
    # vLLM where it was asked for: a model without an adapter scores likelihood on it.
    assert asked == ["vllm"]
    # Both passes of the one measured rewrite in one call, its rubric score, then the memory back.
    assert engine.calls == [("continuation_logprobs", 2), ("next_token_logprobs", 1), ("release", 0)]
    with_source, without = (
        len(encode_rows(tiny_tokenizer, [context], ["In 1999."])[0].prompt)
        for context in ("When did the bridge open?\n\nIt opened in 1999.", "When did the bridge open?")
    )
    assert checked[0]["lp_with_source"] == pytest.approx(-with_source / 100)
    assert checked[0]["pmi"] == pytest.approx((without - with_source) / 100) and checked[0]["pmi"] < 0
    assert (checked[0]["rewrite_score"], checked[0]["rewrite_score_mass"]) == pytest.approx((4.0625, 0.8))
    assert checked[1]["pmi"] is None and checked[1]["rewrite_score"] is None


def test_rewrite_refuses_vllm_likelihood_with_an_adapter_before_the_writer_loads(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(rewrite, "load_engine", lambda *_: pytest.fail("nothing may load"))
    args = RewriteArguments(pairs=str(tmp_path / "missing.jsonl"), output_dir=str(tmp_path / "out"))
    settings = CurationSettings(curation_engine="vllm", calibration_dev_set=None)
    with pytest.raises(UserError, match="^curation_engine vllm: likelihood mode with a LoRA adapter fails"):
        rewrite.rewrite(args, InferenceModelArguments(adapter=str(tmp_path)), settings)


def write_dev_set(path) -> str:
    rows = [("Explain tides.", "The moon pulls the oceans.", 1), ("Explain tides.", "Home | Blog | Subscribe!", 0)]
    path.write_text("".join(json.dumps({"instruction": i, "output": o, "label": y}) + "\n" for i, o, y in rows))
    return str(path)


def test_calibrate_scores_on_curation_engine_and_judges_on_engine(tmp_path, tiny_model_dir, monkeypatch) -> None:
    engine, asked = ScriptedEngine(), []
    monkeypatch.setattr(calibrate, "load_engine", lambda args, name: asked.append(name) or engine)
    dev = write_dev_set(tmp_path / "dev.jsonl")
    out = tmp_path / "cal"
    argv = ["--scorer", str(tiny_model_dir), "--dev", dev, "--curation_engine", "vllm", "--instruction_checks", "none",
            "--output_dir", str(out)]  # fmt: skip
    calibrate.run(argv)
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    scores = [row["scores"][str(tiny_model_dir)] for row in rows]
    assert asked == ["vllm"] and scores == [pytest.approx(4.0625)] * 2  # the scripted engine's digits
    assert engine.calls == [("next_token_logprobs", 2), ("release", 0)]
    engine.calls[:] = []
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "Explain tides.", "chosen": "The moon.", "rejected": "Subscribe!"}) + "\n")
    report = calibrate.run(["--judge", str(tiny_model_dir), "--pairwise_dev", str(pairs), "--engine", "vllm",
                            "--judge_method", "pairwise"])  # fmt: skip
    # "A" and "B" equally likely in both orders: a tie, half right.
    assert asked == ["vllm", "vllm"] and report["pairwise_accuracy"] == 0.5
    assert engine.calls[-1] == ("release", 0) and {name for name, _ in engine.calls[:-1]} == {"next_token_logprobs"}
