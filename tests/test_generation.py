import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import sys  # noqa: E402
import warnings  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import TEXTS  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from humpback_trl import (
    chat_template,  # noqa: E402
    vllm_engine,  # noqa: E402
)
from humpback_trl.generation import SamplingConfig, budget_batches, generate, resolve_engine  # noqa: E402
from humpback_trl.tiny import CHATML_TEMPLATE  # noqa: E402

GREEDY = SamplingConfig(do_sample=False, max_new_tokens=6)


def prompts_of_varied_length(tokenizer, n: int = 7) -> list[str]:
    return [
        chat_template.render(tokenizer, [{"role": "user", "content": " ".join(TEXTS[: 1 + (i * 3) % 5])}], True)
        for i in range(n)
    ]


def one_at_a_time(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    ids = torch.tensor([chat_template.encode(tokenizer, prompt)])
    stops = chat_template.stop_token_ids(tokenizer)
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=stops,
        pad_token_id=tokenizer.pad_token_id,
    )[0, ids.shape[1] :].tolist()
    if any(token in stops for token in out):
        out = out[: min(out.index(token) for token in stops if token in out)]
    return tokenizer.decode(out, skip_special_tokens=True).strip()


def with_stop_bias(model, token_id: int):
    """The same model with an lm_head bias that makes `token_id` the argmax at every position."""
    head = model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[token_id] = 1e4
    model.lm_head = biased
    return model


def test_paper_sampling_defaults() -> None:
    assert SamplingConfig() == SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=256, do_sample=True)


def test_budget_batches_cover_every_index_once_within_budget() -> None:
    lengths = [5, 40, 12, 40, 3, 25, 8]
    batches = list(budget_batches(lengths, max_new_tokens=10, token_budget=110))
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) == 1 or len(batch) * (longest + 10) <= 110
    assert list(budget_batches([500], max_new_tokens=10, token_budget=100)) == [[0]]


def test_output_order_matches_one_at_a_time_generation(tiny_tokenizer, tiny_model) -> None:
    prompts = prompts_of_varied_length(tiny_tokenizer)
    lengths = [len(chat_template.encode(tiny_tokenizer, p)) for p in prompts]
    budget = 2 * (max(lengths) + GREEDY.max_new_tokens)
    assert len(list(budget_batches(lengths, GREEDY.max_new_tokens, budget))) >= 3
    batched = generate(tiny_model, tiny_tokenizer, prompts, GREEDY, token_budget=budget, show_progress=False)
    single = [one_at_a_time(tiny_model, tiny_tokenizer, p, GREEDY.max_new_tokens) for p in prompts]
    assert batched == single
    assert len(set(batched)) > 1, "a degenerate model would make the order check vacuous"


@pytest.mark.parametrize("side", ["right", "left"])
def test_tokenizer_left_untouched(tiny_tokenizer, tiny_model, side: str) -> None:
    tiny_tokenizer.padding_side = side
    pad = tiny_tokenizer.pad_token
    try:
        generate(tiny_model, tiny_tokenizer, prompts_of_varied_length(tiny_tokenizer, 3), GREEDY, show_progress=False)
        assert tiny_tokenizer.padding_side == side
        assert tiny_tokenizer.pad_token == pad
    finally:
        tiny_tokenizer.padding_side = "right"


def test_state_restored_when_generation_fails(tiny_tokenizer, tiny_model, monkeypatch) -> None:
    def fail(**_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(tiny_model, "generate", fail)
    tiny_tokenizer.padding_side = "right"
    tiny_model.train()
    with pytest.raises(RuntimeError, match="boom"):
        generate(tiny_model, tiny_tokenizer, prompts_of_varied_length(tiny_tokenizer, 2), GREEDY, show_progress=False)
    assert tiny_model.training
    assert tiny_tokenizer.padding_side == "right"


@pytest.mark.parametrize("was_training", [True, False])
def test_training_mode_restored(tiny_tokenizer, tiny_model, was_training: bool) -> None:
    tiny_model.train(was_training)
    generate(tiny_model, tiny_tokenizer, prompts_of_varied_length(tiny_tokenizer, 2), GREEDY, show_progress=False)
    assert tiny_model.training is was_training


def test_stops_at_end_of_turn_token(tiny_tokenizer, tiny_model) -> None:
    end_of_turn = chat_template.turn_end(tiny_tokenizer).token_ids[-1]
    model = with_stop_bias(tiny_model, end_of_turn)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    prompts = prompts_of_varied_length(tiny_tokenizer, 4)
    sampling = SamplingConfig(do_sample=False, max_new_tokens=64)
    assert generate(model, tiny_tokenizer, prompts, sampling, show_progress=False) == [""] * 4
    assert len(calls) <= 2, "generation should end after the first token, not run to max_new_tokens"


def test_stops_at_eos_and_pads_without_a_pad_token(tiny_tokenizer, tiny_model) -> None:
    # eos differs from the end-of-turn token (as in Qwen2.5 base) and there is no pad token.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="<|endoftext|>", chat_template=CHATML_TEMPLATE
    )
    assert chat_template.stop_token_ids(tokenizer) == [
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
        tokenizer.eos_token_id,
    ]
    model = with_stop_bias(tiny_model, tokenizer.eos_token_id)
    prompts = prompts_of_varied_length(tokenizer, 3)
    assert generate(model, tokenizer, prompts, SamplingConfig(max_new_tokens=32), show_progress=False) == [""] * 3
    assert tokenizer.pad_token is None


def test_sampling_is_seeded_and_differs_from_greedy(tiny_tokenizer, tiny_model) -> None:
    prompts = prompts_of_varied_length(tiny_tokenizer, 3)
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=8)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(generate(tiny_model, tiny_tokenizer, prompts, sampling, show_progress=False))
    assert runs[0] == runs[1]
    greedy = generate(
        tiny_model, tiny_tokenizer, prompts, SamplingConfig(do_sample=False, max_new_tokens=8), show_progress=False
    )
    assert runs[0] != greedy


def test_no_deprecated_cache_argument(tiny_tokenizer, tiny_model) -> None:
    # FutureWarnings are filtered out by setup.cfg's pytest settings: record every warning here.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generate(tiny_model, tiny_tokenizer, prompts_of_varied_length(tiny_tokenizer, 2), GREEDY)
    assert not [w for w in caught if "past_key_values" in str(w.message)]


@pytest.mark.parametrize(("installed", "engine"), [(True, "vllm"), (False, "transformers")])
def test_auto_engine_is_vllm_where_installed(monkeypatch, installed, engine) -> None:
    assert resolve_engine("transformers") == "transformers" and resolve_engine("vllm") == "vllm"
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object() if installed else None)
    assert resolve_engine("auto") == engine


def test_vllm_missing_names_the_extra(monkeypatch, tiny_tokenizer) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match=r"humpback-trl\[vllm\]"):
        vllm_engine.generate(vllm_engine.VllmModel("unused"), tiny_tokenizer, ["x"], GREEDY)


@pytest.mark.parametrize(("visible", "pinned"), [("2,3", "3"), (None, "1"), ("5", "5")])
def test_each_process_engine_sees_only_its_own_gpu(monkeypatch, visible, pinned) -> None:
    monkeypatch.setattr(vllm_engine, "PartialState", lambda: SimpleNamespace(num_processes=2, local_process_index=1))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    for _ in range(2):  # a second engine in the same process keeps the same device
        vllm_engine.pin_to_process_gpu()
        assert os.environ["CUDA_VISIBLE_DEVICES"] == pinned
