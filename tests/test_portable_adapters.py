"""Adapters that load anywhere: a saved or pushed folder names no local path, and an adapter of a built-in model
names its upstream Hub id, while the project's prompt settings keep the built-in name (issue 23, item 6)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM

from humpback_trl import builtin_models, load_humpback
from humpback_trl.builtin_models import SMOLLM2, portable_name
from humpback_trl.collators import PROMPT_SETTINGS_FILE
from humpback_trl.evaluation import default_judge
from humpback_trl.modeling import BUILTIN_BASE, adapter_base_name
from humpback_trl.scripts import chat, sft
from humpback_trl.tiny import TINY_MODEL

UPSTREAM_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_smollm2_is_named_by_its_upstream_hub_id():
    assert portable_name(SMOLLM2) == UPSTREAM_ID
    assert portable_name("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"
    assert portable_name(TINY_MODEL) == TINY_MODEL  # no upstream: this package rebuilds it anywhere


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """An adapter trained on a built-in model with an upstream Hub id (the tiny model standing in for SmolLM2, so
    the test trains in seconds), pushed to nowhere but saved as for a push: with its checkpoint."""
    folder = tmp_path_factory.mktemp("trained")
    recipe = folder / "seed.yaml"
    recipe.write_text(
        yaml.safe_dump({
            "model_name_or_path": TINY_MODEL, "data": ["builtin:seed"], "use_peft": True, "lora_r": 4,
            "lora_target_modules": ["all-linear"], "output_dir": str(folder / "m0"), "use_cpu": True, "bf16": False,
            "max_steps": 1, "per_device_train_batch_size": 2, "max_length": 128, "save_strategy": "steps",
            "save_steps": 1, "report_to": "none",
        })
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(builtin_models.UPSTREAM, TINY_MODEL, UPSTREAM_ID)
        sft.run(["--config", str(recipe)])
    return folder / "m0"


def test_no_saved_file_names_a_local_path(adapter):
    cache = builtin_models.cache_root()
    found = [
        str(path.relative_to(adapter))
        for path in adapter.rglob("*")
        if path.is_file() and any(str(prefix).encode() in path.read_bytes() for prefix in (adapter.parent, cache))
    ]
    assert found == []
    for folder in (adapter, adapter / "checkpoint-1"):
        assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == UPSTREAM_ID
    assert json.loads((adapter / PROMPT_SETTINGS_FILE).read_text())[BUILTIN_BASE] == TINY_MODEL
    card = (adapter / "README.md").read_text()
    assert f"base_model: {UPSTREAM_ID}" in card and f"**Base model**: `{UPSTREAM_ID}`" in card


@pytest.fixture()
def moved(adapter, tmp_path, monkeypatch):
    """The adapter copied to another machine: a new folder and another cache (the built-in model is rebuilt)."""
    monkeypatch.setenv("HUMPBACK_CACHE", str(tmp_path / "other-cache"))
    return Path(shutil.copytree(adapter, tmp_path / "elsewhere" / "m0", ignore=shutil.ignore_patterns("checkpoint-*")))


def test_humpback_chat_and_load_humpback_load_the_built_in_weights(moved, tmp_path, capsys):
    assert adapter_base_name(str(moved)) == default_judge([str(moved)]) == TINY_MODEL  # eval's judge, dpo's base
    bot = load_humpback(str(moved), engine="transformers")
    base = Path(bot.engine.model.config.name_or_path)
    assert base.is_relative_to(tmp_path / "other-cache") and base.name.startswith("tiny-llama-")
    [answer] = chat.run(["--adapter", str(moved), "--prompt", "Hi", "--max_new_tokens", "4", "--greedy", "true"])
    assert capsys.readouterr().out.startswith(">>> Hi\n") and isinstance(answer, str)


def test_peft_alone_resolves_the_upstream_hub_id(moved, monkeypatch):
    """Offline, so the resolution is checked, not the download: peft asks transformers for the upstream id."""
    asked = []
    tiny = builtin_models.resolve_model(TINY_MODEL)
    load = AutoModelForCausalLM.from_pretrained.__func__

    def from_pretrained(cls, name, *args, **kwargs):
        asked.append(name)
        return load(cls, tiny, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(from_pretrained))
    model = AutoPeftModelForCausalLM.from_pretrained(str(moved))
    assert asked == [UPSTREAM_ID]
    assert model.peft_config["default"].base_model_name_or_path == UPSTREAM_ID
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 3]])).logits.shape[:2] == (1, 3)
