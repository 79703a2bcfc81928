import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import TEXTS  # noqa: E402

from humpback_trl import likelihood  # noqa: E402
from humpback_trl.chat_template import encode  # noqa: E402
from humpback_trl.likelihood import LikelihoodWeights, likelihood_features, output_logprobs  # noqa: E402

# Two instructions share an output (several instructions per segment), one instruction is empty.
INSTRUCTIONS = [
    "Explain how photosynthesis works.",
    "Write a poem about the sea.",
    "What does a plant need to make sugar?",
    "",
    "How do I bake bread?",
]
OUTPUTS = [TEXTS[1] + " " + TEXTS[0], TEXTS[2], TEXTS[1] + " " + TEXTS[0], TEXTS[6], " ".join(TEXTS[3:5])]


def plain_logprobs(model, ids: list[int]) -> torch.Tensor:
    """Log-probability of every token after the first, from one unbatched, uncached forward pass."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits[:-1], dim=-1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


def reference(model, tokenizer, context, output):
    """(mean, end) of `output` computed directly: ChatML writes the content verbatim and closes it with <|im_end|>."""
    if context is None:
        ids = [tokenizer.eos_token_id, *encode(tokenizer, output)]
        return plain_logprobs(model, ids).mean().item(), None
    messages = [{"role": "user", "content": context}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    n_prompt = len(encode(tokenizer, prompt))
    n_with_output = len(encode(tokenizer, prompt + output))
    ids = encode(tokenizer, prompt + output + "<|im_end|>")
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    values = plain_logprobs(model, ids)
    return values[n_prompt - 1 : n_with_output - 1].mean().item(), values[n_with_output - 1 :].sum().item()


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_output_logprobs_match_a_plain_forward_pass_per_pair(tiny_model, tiny_tokenizer, prefix_cache):
    contexts = [*INSTRUCTIONS, None, None]
    outputs = [*OUTPUTS, TEXTS[4], TEXTS[5]]
    got = output_logprobs(
        tiny_model, tiny_tokenizer, contexts, outputs, batch_size=3, with_end=True, prefix_cache=prefix_cache
    )
    for context, output, result in zip(contexts, outputs, got, strict=True):
        mean, end = reference(tiny_model, tiny_tokenizer, context, output)
        assert result.mean == pytest.approx(mean, abs=1e-5)
        assert result.total == pytest.approx(mean * result.n_tokens, abs=1e-4)
        if context is None:
            assert result.end is None
            assert result.n_tokens == len(encode(tiny_tokenizer, output))
        else:
            assert result.end == pytest.approx(end, abs=1e-5)


def test_end_is_none_unless_asked(tiny_model, tiny_tokenizer):
    got = output_logprobs(tiny_model, tiny_tokenizer, INSTRUCTIONS[:2], OUTPUTS[:2])
    assert [g.end for g in got] == [None, None]


def test_features_against_independent_computation(tiny_model, tiny_tokenizer):
    weights = LikelihoodWeights(pmi=1.0, end=0.5, cond=0.25, ifd=2.0)
    got = likelihood_features(tiny_model, tiny_tokenizer, INSTRUCTIONS, OUTPUTS, weights=weights, batch_size=2)
    for instruction, output, pair in zip(INSTRUCTIONS, OUTPUTS, got, strict=True):
        cond, end = reference(tiny_model, tiny_tokenizer, instruction, output)
        uncond, _ = reference(tiny_model, tiny_tokenizer, "", output)
        prior, _ = reference(tiny_model, tiny_tokenizer, None, output)
        assert pair.lp_cond == pytest.approx(cond, abs=1e-5)
        assert pair.lp_uncond == pytest.approx(uncond, abs=1e-5)
        assert pair.lp_prior == pytest.approx(prior, abs=1e-5)
        assert pair.lp_end == pytest.approx(end, abs=1e-5)
        assert pair.pmi == pytest.approx(cond - uncond, abs=1e-5)
        assert pair.ifd == pytest.approx((-cond) / (-prior), abs=1e-5)
        expected = (cond - uncond) + 0.5 * end + 0.25 * cond - 2.0 * (cond / prior)
        assert pair.score == pytest.approx(expected, abs=1e-4)
    # The shared output has one lp_uncond and lp_prior, its instructions different lp_cond.
    assert got[0].lp_uncond == got[2].lp_uncond and got[0].lp_prior == got[2].lp_prior
    assert got[0].lp_cond != got[2].lp_cond


def test_per_output_passes_run_once_per_distinct_output(tiny_model, tiny_tokenizer, monkeypatch):
    calls = []
    real = likelihood.output_logprobs
    # Per pass, the rows of each forward: ("prefix", 1) for a shared prefix run once, ("rows", n) for a batch.
    forwards: list[list[tuple[str, int]]] = []

    def spy(model, tokenizer, contexts, outputs, **kwargs):
        calls.append((list(contexts), list(outputs)))
        forwards.append([])
        return real(model, tokenizer, contexts, outputs, **kwargs)

    forward = tiny_model.forward

    def counting_forward(*args, **kwargs):
        forwards[-1].append(("rows" if "attention_mask" in kwargs else "prefix", kwargs["input_ids"].shape[0]))
        return forward(*args, **kwargs)

    def shape(system_prompt: str | None, weights: LikelihoodWeights) -> list[tuple[list[str], int]]:
        forwards.clear()
        calls.clear()
        likelihood_features(
            tiny_model, tiny_tokenizer, INSTRUCTIONS, OUTPUTS, batch_size=16, system_prompt=system_prompt,
            weights=weights,
        )  # fmt: skip
        return [([kind for kind, _ in run if kind == "prefix"], sum(n for kind, n in run if kind == "rows"))
                for run in forwards]  # fmt: skip

    monkeypatch.setattr(likelihood, "output_logprobs", spy)
    monkeypatch.setattr(tiny_model, "forward", counting_forward)
    with_ifd = LikelihoodWeights(with_ifd=True)
    # Every pair once in the conditional pass, every distinct output once in each output-only pass; the empty-turn
    # pass shares its whole prompt as one cached prefix, the tiny template's user header (3 tokens) is under
    # MIN_PREFIX_TOKENS and plain text shares only its start token.
    assert shape(None, with_ifd) == [([], 5), (["prefix"], 4), ([], 4)]
    unique = [OUTPUTS[0], OUTPUTS[1], OUTPUTS[3], OUTPUTS[4]]
    assert calls == [(INSTRUCTIONS, OUTPUTS), ([""] * 4, unique), ([None] * 4, unique)]
    assert shape("Be brief.", with_ifd) == [(["prefix"], 5), (["prefix"], 4), ([], 4)]
    # Without IFD (the default weights), no plain-text pass.
    assert shape(None, LikelihoodWeights()) == [([], 5), (["prefix"], 4)]
    assert calls == [(INSTRUCTIONS, OUTPUTS), ([""] * 4, unique)]


def test_the_plain_text_pass_runs_only_where_ifd_is_asked_for(tiny_model, tiny_tokenizer):
    def features(weights: LikelihoodWeights) -> list[likelihood.PairLikelihood]:
        return likelihood_features(tiny_model, tiny_tokenizer, INSTRUCTIONS, OUTPUTS, weights=weights, batch_size=2)

    assert not LikelihoodWeights().computes_ifd
    assert LikelihoodWeights(with_ifd=True).computes_ifd and LikelihoodWeights(ifd=0.5).computes_ifd
    without, with_columns = features(LikelihoodWeights()), features(LikelihoodWeights(with_ifd=True))
    assert [(pair.lp_prior, pair.ifd) for pair in without] == [(None, None)] * len(OUTPUTS)
    assert all(pair.lp_prior is not None and pair.ifd is not None for pair in with_columns)
    # IFD's weight is 0 in both, so the score and every other feature are the same.
    for a, b in zip(without, with_columns, strict=True):
        assert (a.lp_cond, a.lp_uncond, a.lp_end, a.pmi, a.score) == (b.lp_cond, b.lp_uncond, b.lp_end, b.pmi, b.score)
    weighted = features(LikelihoodWeights(ifd=0.5))
    for pair, reference in zip(weighted, with_columns, strict=True):
        assert pair.ifd == reference.ifd
        assert pair.score == pytest.approx(reference.score - 0.5 * reference.ifd, abs=1e-9)


def test_batches_are_length_sorted_and_pad_at_most_max_padding():
    # Sorted: 100, 95, 94, 50, 49, 48, 47, 10. 95 joins 100 (5% padding), 94 starts a batch because the first is full,
    # 50 because padding it to 94 costs 47%; 49 joins 50, 47 joins 48 (2%).
    lengths = [50, 100, 10, 94, 47, 95, 49, 48]
    assert likelihood.MAX_PADDING == 0.0625
    assert likelihood._batches(lengths, 2) == [[1, 5], [3], [0, 6], [7, 4], [2]]
    assert likelihood._batches([7, 7, 7, 7, 7], 2) == [[0, 1], [2, 3], [4]]


def test_target_logprobs_in_blocks_equal_one_log_softmax():
    generator = torch.Generator().manual_seed(0)
    positions = 2 * likelihood.LOG_SOFTMAX_POSITIONS + 5  # two full blocks and a partial one
    logits = torch.randn(positions, 1000, generator=generator) * 4
    targets = torch.randint(0, 1000, (positions,), generator=generator)
    expected = torch.log_softmax(logits.double(), dim=-1).gather(-1, targets[:, None])[:, 0]
    got = likelihood.target_logprobs(logits, targets)
    assert got.dtype == torch.float32 and got.shape == (positions,)
    assert torch.allclose(got.double(), expected, atol=1e-5, rtol=0)


def test_ifd_ratio_edges():
    assert likelihood.ifd_ratio(-1.0, -2.0) == 0.5
    assert likelihood.ifd_ratio(-1.0, 0.0) == math.inf
    assert likelihood.ifd_ratio(0.0, 0.0) == 1.0


def test_empty_output_is_a_one_line_error(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="Row 1: An output to score is empty"):
        output_logprobs(tiny_model, tiny_tokenizer, ["a", "b"], ["text", ""])


def test_cached_chat_header_gives_the_uncached_figures(tiny_model, tiny_tokenizer):
    """With a system block the instructions share a cached header; the figures do not change."""
    kwargs = {"with_end": True, "system_prompt": "Be brief and helpful.", "batch_size": 2}
    cached = output_logprobs(tiny_model, tiny_tokenizer, INSTRUCTIONS, OUTPUTS, **kwargs)
    plain = output_logprobs(tiny_model, tiny_tokenizer, INSTRUCTIONS, OUTPUTS, prefix_cache=False, **kwargs)
    for a, b in zip(cached, plain, strict=True):
        assert a.n_tokens == b.n_tokens
        assert a.mean == pytest.approx(b.mean, abs=1e-5) and a.end == pytest.approx(b.end, abs=1e-5)
