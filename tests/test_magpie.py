"""The MAGPIE stage: prompts fed to the model, the filters and their funnel, system prompts, turns, end to end."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import importlib.util  # noqa: E402
import json  # noqa: E402
from functools import cache  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from conftest import REAL_TOKENIZERS, real_tokenizer_path  # noqa: E402
from datasets import load_from_disk  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, set_seed  # noqa: E402

from humpback_trl import magpie, magpie_template  # noqa: E402
from humpback_trl.chat_template import encode, render  # noqa: E402
from humpback_trl.generation import generate  # noqa: E402
from humpback_trl.paths import public_name
from humpback_trl.scripts import magpie as magpie_script  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["quickstart", "llama-3.1-8b", "qwen2.5-7b"]
WHALES = "Explain in simple terms how humpback whales produce the long songs that they sing during the breeding"


@cache
def real_tokenizer(name: str):
    return AutoTokenizer.from_pretrained(real_tokenizer_path(name))


def turns(*texts: str) -> list[dict[str, str]]:
    roles = ("user", "assistant")
    return [{"role": roles[i % 2], "content": text} for i, text in enumerate(texts)]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_parse(recipe):
    args, model_args, settings = magpie_script.make_parser().parse_args_and_config(
        ["--config", str(ROOT / "recipes" / recipe / "magpie.yaml")]
    )
    assert args.instruction_top_p == 1.0 and args.response_temperature == 0.0
    expected = {"quickstart": "builtin:smollm2-135m-instruct", "llama-3.1-8b": "meta-llama/Llama-3.1-8B-Instruct",
                "qwen2.5-7b": "Qwen/Qwen2.5-7B-Instruct"}[recipe]  # fmt: skip
    assert model_args.model_name_or_path == expected


@pytest.mark.parametrize("name", REAL_TOKENIZERS)
def test_instruction_prompt_encodes_to_the_pre_query_ids(name):
    tokenizer = real_tokenizer(name)
    history = turns("Q1", "A1")
    for prompt, ids in [
        (magpie_template.instruction_prompt(tokenizer), magpie_template.pre_query_ids(tokenizer)),
        (
            magpie_template.instruction_prompt(tokenizer, history=history),
            magpie_template.pre_query_ids(tokenizer, history=history),
        ),
    ]:
        assert encode(tokenizer, prompt) == ids
    if name == "mistral-instruct-v0.3":
        # The template's trailing space is left to the model, which writes it inside its first word.
        assert magpie_template.instruction_prompt(tokenizer) == "<s>[INST]"


def test_prompts_fed_to_the_model_hold_exactly_one_bos(monkeypatch):
    tokenizer = real_tokenizer("llama-3.2-instruct")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, bos_token_id=tokenizer.bos_token_id)  # fmt: skip
    model = LlamaForCausalLM(config)
    calls = []
    real_generate = model.generate

    def recording_generate(*args, **kwargs):
        # The rows as the model sees them, left padding removed.
        calls.append(
            [
                ids[len(ids) - sum(mask) :]
                for ids, mask in zip(kwargs["input_ids"].tolist(), kwargs["attention_mask"].tolist(), strict=True)
            ]
        )
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    args = magpie.MagpieArguments(num_samples=3, instruction_max_new_tokens=4, response_max_new_tokens=2)
    rows = [{"source_id": f"magpie:{i}", "system_prompt": None} for i in range(3)]
    set_seed(0)

    def engine(prompts, sampling, stops):
        return generate(model, tokenizer, prompts, sampling, 4096, stops, show_progress=False)

    out = magpie.synthesize(rows, tokenizer, engine, args)
    instruction_ids = magpie_template.pre_query_ids(tokenizer)
    assert calls[0] == [instruction_ids] * 3
    assert len({row["instruction"] for row in out}) > 1, "identical prompts, sampled, give different instructions"
    assert len(calls) == 2 and sum(len(batch) for batch in calls[1:]) > 0
    for batch in calls:
        for ids in batch:
            assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


def fake_generator(log: list):
    """Instructions "Question <call>-<row> about whales?" (the second row's first one empty); answers naming the
    prompt's length. Every call is logged."""

    def generate_fn(prompts, sampling, stops):
        log.append((prompts, sampling, stops))
        if stops is None:
            return [f"Answer to a prompt of {len(prompt)} characters." for prompt in prompts]
        return [
            "" if len(log) == 1 and i == 1 else f"Question {len(log)}-{i} about whales?" for i in range(len(prompts))
        ]

    return generate_fn


def test_two_turn_conversations_have_the_right_structure(tiny_tokenizer):
    args = magpie.MagpieArguments(num_turns=2, instruction_temperature=0.9, response_temperature=0.0)
    rows = [{"source_id": "magpie:0", "system_prompt": "Be brief."}, {"source_id": "magpie:1", "system_prompt": None},
            {"source_id": "magpie:2", "system_prompt": None}]  # fmt: skip
    log = []
    out = magpie.synthesize(rows, tiny_tokenizer, fake_generator(log), args)
    assert [row["source_id"] for row in out] == ["magpie:0", "magpie:1", "magpie:2"]
    first, empty, plain = (row["messages"] for row in out)
    assert [m["role"] for m in first] == ["system", "user", "assistant", "user", "assistant"]
    assert [m["role"] for m in plain] == ["user", "assistant", "user", "assistant"]
    # An empty instruction ends its conversation: it gets no response and no second turn.
    assert empty == [{"role": "user", "content": ""}]
    for row in out:
        assert row["source"] == "magpie"
        assert row["instruction"] == next((m["content"] for m in row["messages"] if m["role"] == "user"), "")
        assert row["output"] == next((m["content"] for m in row["messages"] if m["role"] == "assistant"), "")
    (p1, s1, stop1), (r1, s2, stop2), (p2, _, _), (r2, _, _) = log
    assert (s1.temperature, s1.do_sample, s2.do_sample, stop2) == (0.9, True, False, None)
    assert stop1 == magpie_template.instruction_stop_token_ids(tiny_tokenizer)
    default = magpie_template.instruction_prompt(tiny_tokenizer)
    assert p1 == [magpie_template.instruction_prompt(tiny_tokenizer, "Be brief."), default, default]
    assert r1[0] == render(tiny_tokenizer, first[:2], add_generation_prompt=True) and len(r1) == 2
    assert p2[0] == magpie_template.instruction_prompt(tiny_tokenizer, "Be brief.", history=first[1:3])
    assert r2[1] == render(tiny_tokenizer, plain[:3], add_generation_prompt=True)


def test_each_filter_removes_exactly_its_rows(tiny_tokenizer):
    conversations = [
        turns("", "an answer"),  # empty instruction
        turns("   ", "an answer"),  # empty instruction
        turns("Hi there?", "an answer"),  # 9 characters: too short
        turns("x " * 1001, "an answer"),  # 2002 characters: too long
        turns("What is a whale?\nassistant\nA whale is a mammal.", "an answer"),  # wrote the assistant turn
        turns("Explain the <|im_start|> token, please.", "an answer"),  # template markup
        turns("User: what is the tallest tree?", "an answer"),  # role header
        turns("请写一首关于大海的诗，谢谢你。", "an answer"),  # not English
        turns("What is the capital of France?", "  "),  # empty response
        turns("What is the capital of Peru?"),  # never answered
        turns("How do whales sing their songs?", "They sing.", "Why?", "Mating."),  # second instruction too short
        turns(WHALES + " season.", "an answer"),  # kept
        turns(WHALES.lower() + "   season.", "an answer"),  # exact duplicate (case and spaces)
        turns(WHALES + " months.", "an answer"),  # near duplicate
        turns("How do whales sing their songs?", "They sing.", "Why do they sing at night?", "Mating."),  # kept
    ]
    args = magpie.MagpieArguments(language="en")
    keep, counts = magpie.filter_conversations(conversations, magpie.instruction_checks(args, tiny_tokenizer), args)
    assert keep == [11, 14]
    assert counts == {"generated": 15, "removed_empty_instruction": 2, "removed_too_short": 2, "removed_too_long": 1,
                      "removed_template_leak": 3, "removed_language": 1, "removed_empty_response": 2,
                      "removed_exact_duplicate": 1, "removed_near_duplicate": 1, "kept": 2}  # fmt: skip
    assert sum(counts[key] for key in magpie.REMOVAL_KEYS) + counts["kept"] == counts["generated"]
    loose = magpie.MagpieArguments(min_instruction_chars=None, exact_dedup=False, near_dedup_threshold=None)
    keep, counts = magpie.filter_conversations(conversations, magpie.instruction_checks(loose, tiny_tokenizer), loose)
    assert keep == [2, 7, 10, 11, 12, 13, 14] and counts["removed_language"] == 0


@pytest.mark.parametrize("name", REAL_TOKENIZERS)
def test_leak_check_reads_the_templates_headers(name):
    leaks = magpie_template.leak_check(real_tokenizer(name))
    header = "model" if name == "gemma-2-it" else "assistant"
    assert not leaks("Write a haiku about a humpback whale, then explain how the model of a car works.")
    assert leaks(f"Write a haiku about whales.\n{header}\nDeep water singing")


@pytest.mark.skipif(importlib.util.find_spec("langdetect") is not None, reason="langdetect is installed")
def test_language_other_than_english_needs_langdetect(tiny_tokenizer):
    with pytest.raises(ImportError, match="pip install langdetect"):
        magpie.instruction_checks(magpie.MagpieArguments(language="fr"), tiny_tokenizer)


def test_system_prompts_are_drawn_with_weights_deterministically():
    args = magpie.MagpieArguments(num_samples=200, system_prompts=["A", "B", "C"], system_prompt_weights=[1, 0, 3])
    drawn = magpie.magpie_items(args)["system_prompt"]
    assert drawn == magpie.magpie_items(args)["system_prompt"]
    assert "B" not in drawn and 20 < drawn.count("A") < 80
    # Keyed by the row index alone: a shorter run draws the same prompts for its rows.
    fewer = magpie.MagpieArguments(num_samples=50, system_prompts=["A", "B", "C"], system_prompt_weights=[1, 0, 3])
    assert magpie.magpie_items(fewer)["system_prompt"] == drawn[:50]
    assert magpie.magpie_items(magpie.MagpieArguments(num_samples=3))["system_prompt"] == [None] * 3
    with pytest.raises(ValueError, match="one weight per system prompt"):
        magpie.MagpieArguments(system_prompts=["A"], system_prompt_weights=[1, 2])


def test_tiny_model_run_writes_the_filtered_dataset_and_resumes(tmp_path, tiny_model_dir, monkeypatch):
    calls = []
    real_generate = magpie.generate
    monkeypatch.setattr(magpie, "generate", lambda *a, **k: calls.append(len(a[2])) or real_generate(*a, **k))
    out = tmp_path / "magpie"
    argv = ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--num_samples", "12",
            "--shard_size", "4", "--instruction_max_new_tokens", "16", "--response_max_new_tokens", "6",
            "--min_instruction_chars", "20", "--system_prompts", "Be brief.", "Be kind.",
            "--system_prompt_weights", "1", "1", "--curate", "true",
            # Calibrating the judge is test_curation_panel's; here it would score the bundled dev set on every run.
            "--calibration_dev_set", "none"]  # fmt: skip
    kept = magpie_script.run(argv)
    assert calls and sum(calls[::2]) == 12
    generated = load_from_disk(str(out / "generation" / "data"))
    report = json.loads((out / "report.json").read_text())
    assert report["generated"] == len(generated) == 12
    removed = sum(report[key] for key in magpie.REMOVAL_KEYS)
    assert len(kept) == report["kept"] == 12 - removed
    instructions = [text.strip() for text in generated["instruction"]]
    assert report["removed_empty_instruction"] == instructions.count("")
    assert report["removed_too_short"] == sum(1 for text in instructions if 0 < len(text) < 20)
    rows = [json.loads(line) for line in (out / "magpie.jsonl").read_text().splitlines()]
    assert 0 < len(rows) == len(kept) and {row["source"] for row in rows} == {"magpie"}
    assert all(row["instruction"] == row["messages"][1]["content"] for row in rows)
    assert all(row["messages"][0]["content"] in ("Be brief.", "Be kind.") for row in rows)
    assert (out / "report.md").is_file() and report["iterations"][0]["candidates"] == len(kept)
    assert len((out / "curation" / "scored.jsonl").read_text().splitlines()) == len(kept)
    card = (out / "README.md").read_text()
    assert public_name(str(tiny_model_dir)) in card and "T=1.0, top-p=1.0" in card and "greedy" in card
    # A rerun finds every shard finished: no generation, the same data.
    calls.clear()
    again = magpie_script.run(argv)
    assert calls == [] and again.to_list() == kept.to_list()
