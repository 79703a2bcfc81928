"""Exact resume: a rerun after kill -9 trains the adapter an uninterrupted run trains (QLoRA included), and a run
that already reached max_steps trains no further step."""

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml
from safetensors.torch import load_file

from humpback_trl.scripts import sft
from humpback_trl.training import last_checkpoint

PAIRS = [{"instruction": f"What is {i} plus {i}?", "output": f"It is {2 * i}. " * 3, "id": f"p{i}"} for i in range(24)]
ADAPTER = "adapter_model.safetensors"


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


def largest_difference(a, b) -> float:
    first, second = load_file(str(a / ADAPTER)), load_file(str(b / ADAPTER))
    assert first.keys() == second.keys()
    return max((first[k].float() - second[k].float()).abs().max().item() for k in first)


def test_a_checkpoint_killed_while_saving_is_not_resumed_from(tmp_path):
    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-10-old").mkdir()
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert last_checkpoint(tmp_path / "missing") is None


def test_kill_9_mid_training_then_rerun_gives_the_uninterrupted_adapter(tmp_path, tiny_model_dir, data_path):
    """QLoRA, as the recipes train: its bfloat16 adapter must not come back from the checkpoint as float32 (it did:
    1.5e-3 apart). The rerun resumes from checkpoint-2 or -4; one more rerun, from checkpoint-4 = max_steps, must
    train no step 5 (it did: transformers takes one step before it checks max_steps)."""
    sft.run(["--config", recipe(tmp_path / "whole", tiny_model_dir, data_path)])
    config = recipe(tmp_path / "killed", tiny_model_dir, data_path)
    out = tmp_path / "killed" / "out"
    command = [sys.executable, "-m", "humpback_trl.scripts.sft", "--config", config]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while last_checkpoint(out) is None and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, stderr[-2000:]
    assert not (out / ADAPTER).exists(), "killed after training ended: nothing left to resume"

    assert sft.run(["--config", config]).state.global_step == 4
    assert largest_difference(tmp_path / "whole" / "out", out) <= 1e-6

    assert sft.run(["--config", config]).state.global_step == 4
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert largest_difference(tmp_path / "whole" / "out", out) <= 1e-6
