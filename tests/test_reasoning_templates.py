"""Hybrid-thinking templates (Qwen3): the empty thinking block belongs to the prompt, never to labels or outputs.

Held to Qwen3's real tokenizer (../shared/tokenizers/qwen3) and to hand-written expected text; the other families
must come out unchanged (no thinking block found, no template kwarg added).
"""

import json
import logging

import pytest
import torch
from conftest import REAL_TOKENIZERS, real_tokenizer_path
from transformers import AutoTokenizer, LlamaForCausalLM

from humpback_trl import SwappedFieldCollator
from humpback_trl.chat_template import Thinking, render, strip_thinking, thinking, thinking_off
from humpback_trl.collators import IGNORE_INDEX, load_collator, save_prompt_settings
from humpback_trl.generation import SamplingConfig, generate
from humpback_trl.scoring import logits_prompt, score_cue
from humpback_trl.scripts import augment
from humpback_trl.tiny import build_model

# Written from Qwen3's template by hand: the generation prompt of non-thinking mode.
QWEN3_PROMPT_END = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
INSTRUCTION = "How do I keep basil alive indoors?"
ROW = {"instruction": INSTRUCTION, "output": "Put it in the sunniest window.", "source": "seed", "source_id": "r1"}
# What a Qwen3 model may still write: a thought, then the instruction, then the end of its turn.
THOUGHT = "<think>\nThe text is about basil care.\n</think>\n\n"


@pytest.fixture(scope="module")
def qwen3():
    return AutoTokenizer.from_pretrained(real_tokenizer_path("qwen3"))


def test_qwen3_is_found_to_think_and_no_other_family_is(qwen3, tiny_tokenizer):
    assert thinking(qwen3) == Thinking(open_tag="<think>", close_tag="</think>", switch=True)
    assert thinking_off(qwen3) == {"enable_thinking": False}
    for name in REAL_TOKENIZERS:
        tokenizer = AutoTokenizer.from_pretrained(real_tokenizer_path(name))
        assert thinking(tokenizer) is None and thinking_off(tokenizer) == {}, name
    assert thinking(tiny_tokenizer) is None


def test_every_generation_prompt_is_rendered_in_non_thinking_mode(qwen3):
    user = [{"role": "user", "content": "Hi"}]
    assert render(qwen3, user, add_generation_prompt=True) == "<|im_start|>user\nHi<|im_end|>\n" + QWEN3_PROMPT_END
    # A recipe may still ask for thinking mode explicitly.
    thinking_prompt = render(qwen3, user, add_generation_prompt=True, enable_thinking=True)
    assert thinking_prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    # The curation cue follows the empty block, where a non-thinking answer starts.
    cue = score_cue(qwen3)
    assert logits_prompt(qwen3, "Q", "A", cue).endswith(QWEN3_PROMPT_END + cue.text)


@pytest.mark.parametrize(("direction", "target"), [("backward", INSTRUCTION), ("forward", ROW["output"])])
def test_labels_decode_to_exactly_the_completion_and_the_end_of_turn(qwen3, direction, target):
    batch = SwappedFieldCollator(qwen3, direction=direction)([ROW])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    trained = labels != IGNORE_INDEX
    assert qwen3.decode(ids[trained]) == target + "<|im_end|>"
    assert qwen3.decode(ids[~trained]).endswith(QWEN3_PROMPT_END)


def test_the_adapters_prompt_settings_carry_non_thinking_mode(qwen3, tmp_path):
    save_prompt_settings(SwappedFieldCollator(qwen3, direction="backward"), tmp_path)
    saved = json.loads((tmp_path / "humpback_prompts.json").read_text(encoding="utf-8"))
    assert saved["template_kwargs"] == {"enable_thinking": False}
    assert load_collator(qwen3, tmp_path, "backward").template_kwargs == {"enable_thinking": False}
    # Settings saved before thinking templates were handled still prompt in non-thinking mode.
    (tmp_path / "humpback_prompts.json").write_text(json.dumps({**saved, "template_kwargs": {}}), encoding="utf-8")
    assert load_collator(qwen3, tmp_path, "backward").template_kwargs == {"enable_thinking": False}


def test_thinking_mode_in_training_is_refused_naming_the_switch(qwen3):
    collator = SwappedFieldCollator(qwen3, template_kwargs={"enable_thinking": True})
    with pytest.raises(
        ValueError, match=r"writes a thinking block \(<think>...</think>\).*leave enable_thinking unset"
    ):
        collator([ROW])


@pytest.mark.parametrize(
    ("text", "expected", "held"),
    [
        (THOUGHT + INSTRUCTION, INSTRUCTION, True),
        (INSTRUCTION, INSTRUCTION, False),
        ("<think>\nstill thinking when the token limit came", "", True),  # no instruction was written
        ("a thought closed without opening\n</think>\n\n" + INSTRUCTION, INSTRUCTION, True),
        ("Compare <think>one</think> with <think>two</think>", "Compare  with", True),
    ],
)
def test_thinking_text_is_stripped(qwen3, text, expected, held):
    assert strip_thinking(qwen3, [text]) == ([expected], int(held))


def test_other_families_keep_their_text_as_written(tiny_tokenizer):
    assert strip_thinking(tiny_tokenizer, [THOUGHT + INSTRUCTION]) == ([THOUGHT + INSTRUCTION], 0)


def scripted_generate(tokenizer, reply: str, prompts_seen: list[str]):
    """A `generate` that records the prompts it is given and answers every one with `reply` (the random model
    could never be made to write a thinking block)."""
    reply_ids = torch.tensor(tokenizer(reply, add_special_tokens=False)["input_ids"])

    def fake(self, input_ids, attention_mask, **kwargs):
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            prompts_seen.append(tokenizer.decode(ids[mask.bool()]))
        return torch.cat([input_ids, reply_ids.repeat(len(input_ids), 1)], dim=1)

    return fake


def test_generated_text_loses_its_thinking_block_and_it_is_counted(qwen3, monkeypatch, caplog):
    seen: list[str] = []
    monkeypatch.setattr(LlamaForCausalLM, "generate", scripted_generate(qwen3, THOUGHT + "Hi.<|im_end|>", seen))
    model = build_model(qwen3, hidden_size=16, layers=1)
    prompts = [render(qwen3, [{"role": "user", "content": f"Q{i}"}], add_generation_prompt=True) for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="humpback_trl.generation"):
        texts = generate(model, qwen3, prompts, SamplingConfig(max_new_tokens=32))
    assert texts == ["Hi."] * 3
    assert seen and all(prompt.endswith(QWEN3_PROMPT_END) for prompt in seen)
    assert [record.getMessage() for record in caplog.records] == [
        "3 of 3 generated texts held thinking text despite non-thinking mode; it was stripped from them"
    ]


def test_augment_on_qwen3_writes_no_thinking_into_any_instruction(qwen3, tmp_path, monkeypatch):
    model_dir = tmp_path / "qwen3-tiny"
    qwen3.save_pretrained(model_dir)
    build_model(qwen3, hidden_size=16, layers=1).save_pretrained(model_dir)
    corpus = tmp_path / "segments.jsonl"
    texts = [f"Basil needs six hours of sun, note {i}." for i in range(4)]
    corpus.write_text("".join(json.dumps({"segment_id": f"s{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    seen: list[str] = []
    reply = THOUGHT + INSTRUCTION + "<|im_end|>"
    monkeypatch.setattr(LlamaForCausalLM, "generate", scripted_generate(qwen3, reply, seen))
    out = tmp_path / "aug"
    augment.run(
        ["--corpus", str(corpus), "--model_name_or_path", str(model_dir), "--output_dir", str(out),
         "--engine", "transformers", "--max_new_tokens", "32", "--shard_size", "2"]
    )  # fmt: skip
    rows = [json.loads(line) for line in (out / "candidates.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["instruction"] for row in rows] == [INSTRUCTION] * 4
    assert [row["output"] for row in rows] == texts
    assert "<think>" not in (out / "candidates.jsonl").read_text(encoding="utf-8")
    assert len(seen) == 4 and all(prompt.endswith(QWEN3_PROMPT_END) for prompt in seen)
