"""Thinking text that a model of a thinking template (Qwen3) still writes is stripped on the vLLM engine as on the
transformers one, through the same `chat_template.strip_generated`, and the stage's report counts it (issue 23,
item 5). vLLM is replaced by a scripted engine that answers every prompt with the same text: no model could be made
to write a thinking block, and the test then runs without the vLLM extra."""

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import real_tokenizer_path
from transformers import AutoTokenizer, LlamaForCausalLM

from humpback_trl import vllm_engine
from humpback_trl.chat_template import render, take_thinking_counts
from humpback_trl.generation import SamplingConfig
from humpback_trl.scripts import augment
from humpback_trl.tiny import build_model

INSTRUCTION = "How do I keep basil alive indoors?"
THOUGHT = "<think>\nThe text is about basil care.\n</think>\n\n"
SEGMENTS = [f"Basil needs six hours of sun, note {i}." for i in range(4)]


@pytest.fixture(scope="module")
def qwen3():
    return AutoTokenizer.from_pretrained(real_tokenizer_path("qwen3"))


@pytest.fixture()
def scripted_vllm(monkeypatch):
    """vLLM answering every prompt with the text `reply(text)` sets; the prompts it received are in `prompts`."""
    engine = SimpleNamespace(text="", prompts=[])

    def generate(prompts, params, lora_request=None, use_tqdm=False):
        engine.prompts += prompts
        return [SimpleNamespace(outputs=[SimpleNamespace(text=engine.text)]) for _ in prompts]

    engine.generate = generate
    monkeypatch.setattr(vllm_engine, "_vllm", lambda: SimpleNamespace(SamplingParams=lambda **kwargs: kwargs))
    monkeypatch.setattr(vllm_engine, "engine", lambda model: engine)
    take_thinking_counts()  # what earlier tests of this process generated is not this test's
    return engine


def test_vllm_generation_strips_thinking_and_counts_it(qwen3, scripted_vllm, caplog):
    scripted_vllm.text = THOUGHT + "Hi."
    prompts = [render(qwen3, [{"role": "user", "content": f"Q{i}"}], add_generation_prompt=True) for i in range(3)]
    with caplog.at_level(logging.WARNING):
        texts = vllm_engine.generate(vllm_engine.VllmModel("unused"), qwen3, prompts, SamplingConfig())
    assert texts == ["Hi."] * 3
    assert [record.getMessage() for record in caplog.records] == [
        "3 of 3 generated texts held thinking text despite non-thinking mode; it was stripped from them"
    ]
    assert take_thinking_counts() == {"generated": 3, "stripped": 3}
    assert take_thinking_counts() is None  # read once: the next stage counts from zero


def run_augment(model_dir, tmp_path, engine: str = "vllm") -> Path:
    corpus = tmp_path / "segments.jsonl"
    corpus.write_text("".join(json.dumps({"segment_id": f"s{i}", "text": t}) + "\n" for i, t in enumerate(SEGMENTS)))
    out = tmp_path / "aug"
    augment.run(
        ["--corpus", str(corpus), "--model_name_or_path", str(model_dir), "--output_dir", str(out),
         "--engine", engine, "--max_new_tokens", "32", "--shard_size", "2"]
    )  # fmt: skip
    rows = [json.loads(line) for line in (out / "candidates.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["instruction"] for row in rows] == [INSTRUCTION] * len(SEGMENTS)
    return out


@pytest.fixture()
def qwen3_dir(qwen3, tmp_path):
    """A tiny random model with Qwen3's tokenizer and template."""
    model_dir = tmp_path / "qwen3-tiny"
    qwen3.save_pretrained(model_dir)
    build_model(qwen3, hidden_size=16, layers=1).save_pretrained(model_dir)
    return model_dir


def assert_reported(out: Path) -> None:
    assert json.loads((out / "report.json").read_text())["thinking"] == {"generated": 4, "stripped": 4}
    assert "Thinking text stripped from 4 of 4 texts the model generated" in (out / "report.md").read_text()


def test_augment_on_vllm_reports_the_thinking_it_stripped(qwen3_dir, scripted_vllm, tmp_path):
    scripted_vllm.text = THOUGHT + INSTRUCTION
    assert_reported(run_augment(qwen3_dir, tmp_path))
    assert len(scripted_vllm.prompts) == 4


def test_augment_on_transformers_reports_the_thinking_it_stripped(qwen3, qwen3_dir, tmp_path, monkeypatch):
    """The same count through the transformers engine: its `generate` scripted to append the same reply."""
    reply = torch.tensor(qwen3(THOUGHT + INSTRUCTION + "<|im_end|>", add_special_tokens=False)["input_ids"])
    monkeypatch.setattr(
        LlamaForCausalLM,
        "generate",
        lambda self, input_ids, **kw: torch.cat([input_ids, reply.repeat(len(input_ids), 1)], 1),
    )
    take_thinking_counts()
    assert_reported(run_augment(qwen3_dir, tmp_path, engine="transformers"))


def test_a_template_without_thinking_adds_nothing_to_the_report(tiny_model_dir, scripted_vllm, tmp_path):
    scripted_vllm.text = INSTRUCTION
    out = run_augment(tiny_model_dir, tmp_path)
    assert "thinking" not in json.loads((out / "report.json").read_text())
