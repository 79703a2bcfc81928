"""Exact resume: a rerun after kill -9 resumes from the checkpoint the kill left and trains the adapter an uninterrupted
run trains (SFT with QLoRA, DPO, KTO), and a run that already reached max_steps trains no further step."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ADAPTER, largest_difference
from sft_adapter import make_sft_adapter
from transformers import Trainer

from humpback_trl.scripts import dpo, kto, sft
from humpback_trl.training import last_checkpoint

PAIRS = [{"instruction": f"What is {i} plus {i}?", "output": f"It is {2 * i}. " * 3, "id": f"p{i}"} for i in range(24)]


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return path


def recipe(folder, model_dir, data_path, **overrides):
    """24 pairs in batches of 8: 3 steps an epoch, so max_steps 4 and the saves at 2 and 4 fall inside an epoch."""
    config = {
        "model_name_or_path": str(model_dir), "dtype": "float32", "use_peft": True, "lora_r": 8, "lora_alpha": 16,
        "lora_dropout": 0.1, "lora_target_modules": ["all-linear"], "data": [str(data_path)], "id_column": "id",
        "direction": "backward", "output_dir": str(folder / "out"), "use_cpu": True, "bf16": False, "max_steps": 4,
        "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
        "per_device_train_batch_size": 8, "learning_rate": 5e-3, "lr_scheduler_type": "linear", "max_length": 128,
        "activation_checkpointing": False, "logging_steps": 1, "save_strategy": "steps", "save_steps": 2,
        "report_to": "none", "seed": 0, **overrides,
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_a_checkpoint_killed_while_saving_is_not_resumed_from(tmp_path):
    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-10-old").mkdir()
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert last_checkpoint(tmp_path / "missing") is None


def kill_after_a_checkpoint(module: str, config: str, out: Path) -> str:
    """Start the stage as its own process, SIGKILL it once a complete checkpoint is on disk, and return the last
    complete checkpoint at its death: the one a rerun must resume from. No checkpoint, or a finished run, fails."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--config", config], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 240
    while last_checkpoint(out) is None and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {stderr[-2000:]}"
    at_kill = last_checkpoint(out)
    assert at_kill is not None, "killed before any checkpoint was complete: nothing to resume from"
    assert not (out / ADAPTER).exists(), "killed after training ended: nothing left to resume"
    return at_kill


@pytest.fixture()
def loaded_checkpoints(monkeypatch) -> list[str]:
    """The checkpoints a trainer loads, in order: the resume itself, observed where transformers reads it."""
    loaded: list[str] = []
    real = Trainer._load_from_checkpoint

    def spy(self, resume_from_checkpoint, model=None):
        loaded.append(resume_from_checkpoint)
        return real(self, resume_from_checkpoint, model)

    monkeypatch.setattr(Trainer, "_load_from_checkpoint", spy)
    return loaded


def test_kill_9_mid_training_then_rerun_gives_the_uninterrupted_adapter(
    tmp_path, tiny_model_dir, data_path, loaded_checkpoints
):
    """QLoRA, as the recipes train: its bfloat16 adapter must not come back from the checkpoint as float32 (it did:
    1.5e-3 apart). The rerun resumes from the checkpoint the kill left (-2 or -4); one more rerun, from
    checkpoint-4 = max_steps, must train no step 5 (it did: transformers takes one step before it checks max_steps)."""
    sft.run(["--config", recipe(tmp_path / "whole", tiny_model_dir, data_path)])
    config = recipe(tmp_path / "killed", tiny_model_dir, data_path)
    out = tmp_path / "killed" / "out"
    at_kill = kill_after_a_checkpoint("humpback_trl.scripts.sft", config, out)

    loaded_checkpoints.clear()
    assert sft.run(["--config", config]).state.global_step == 4
    assert loaded_checkpoints == [at_kill]
    assert largest_difference(tmp_path / "whole" / "out", out) <= 1e-6

    loaded_checkpoints.clear()
    assert sft.run(["--config", config]).state.global_step == 4
    assert loaded_checkpoints == [str(out / "checkpoint-4")]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert largest_difference(tmp_path / "whole" / "out", out) <= 1e-6


def preference_recipe(folder: Path, adapter: Path, kind: str) -> str:
    """24 rows in batches of 8: 3 steps an epoch; max_steps 4 with saves at 2 and 4, as the SFT recipe above."""
    rows = []
    for i in range(24):
        prompt = [{"role": "user", "content": f"What is {i} plus {i}?"}]
        right, wrong = [{"role": "assistant", "content": f"{2 * i}."}], [{"role": "assistant", "content": "No."}]
        if kind == "dpo":
            rows.append({"prompt": prompt, "chosen": right, "rejected": wrong})
        else:
            rows.append({"prompt": prompt, "completion": right if i % 2 else wrong, "label": bool(i % 2)})
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{kind}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = {
        "dtype": "float32", "use_peft": True, "sft_adapter": str(adapter), "sft_stage": "m1", "data": [str(data)],
        "output_dir": str(folder / "out"), "use_cpu": True, "bf16": False, "max_steps": 4,
        "per_device_train_batch_size": 8, "learning_rate": 1e-2, "max_length": 64, "gradient_checkpointing": False,
        "logging_steps": 1, "save_strategy": "steps", "save_steps": 2, "report_to": "none", "seed": 0,
    }  # fmt: skip
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("kind", ["dpo", "kto"])
def test_preference_training_killed_mid_way_resumes_to_the_uninterrupted_adapter(
    tmp_path, tiny_model_dir, loaded_checkpoints, kind
):
    script = {"dpo": dpo, "kto": kto}[kind]
    adapter = make_sft_adapter(tiny_model_dir, tmp_path / "m1")
    script.run(["--config", preference_recipe(tmp_path / "whole", adapter, kind)])
    config = preference_recipe(tmp_path / "killed", adapter, kind)
    out = tmp_path / "killed" / "out"
    at_kill = kill_after_a_checkpoint(f"humpback_trl.scripts.{kind}", config, out)

    loaded_checkpoints.clear()
    assert script.run(["--config", config]).state.global_step == 4
    assert loaded_checkpoints == [at_kill]
    assert largest_difference(tmp_path / "whole" / "out", out) <= 1e-6
