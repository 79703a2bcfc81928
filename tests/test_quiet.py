"""Quiet runs (issue 22, item 7): a training stage and a generating stage, run as the loop runs them (their own
process), print none of the libraries' noise: bitsandbytes' kernel lookup, transformers' deprecation warning read by
peft, datasets' bars for reading a file, writing JSON lines and saving a dataset."""

import json
import os
import subprocess
import sys

import yaml

NOISE = (
    "gemm_4bit_forward",
    "kernels-community",
    "is_gradient_checkpointing",
    "FutureWarning",
    "Generating train split",
    "Creating json from Arrow format",
    "Saving the dataset",
)


def stage(tmp_path, module, config):
    recipe = tmp_path / f"{module}.yaml"
    recipe.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # every warning shows, as on a user's terminal
    command = [sys.executable, "-m", f"humpback_trl.scripts.{module}", "--config", str(recipe)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def test_a_training_and_a_generating_stage_print_none_of_the_noise(tmp_path):
    seed = tmp_path / "seed.jsonl"
    seed.write_text("".join(json.dumps({"instruction": f"Add {i}.", "output": f"{i}."}) + "\n" for i in range(4)))
    training = stage(tmp_path, "sft", {
        "model_name_or_path": "builtin:tiny-llama", "data": [str(seed)], "direction": "backward",
        "output_dir": str(tmp_path / "myx"), "use_cpu": True, "bf16": False, "max_steps": 1,
        "per_device_train_batch_size": 2, "max_length": 128, "use_peft": True, "lora_r": 4,
        "lora_target_modules": ["all-linear"], "save_strategy": "no", "report_to": "none",
    })  # fmt: skip
    corpus = tmp_path / "segments.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"Segment {i}.", "segment_id": f"s{i}"}) + "\n" for i in range(3)))
    generating = stage(tmp_path, "augment", {
        "corpus": str(corpus), "adapter": str(tmp_path / "myx"), "output_dir": str(tmp_path / "augment"),
        "engine": "transformers", "max_new_tokens": 4,
    })  # fmt: skip
    assert "Saved myx to" in training and (tmp_path / "augment" / "candidates.jsonl").is_file()
    noisy = [line for line in (training + generating).splitlines() if any(noise in line for noise in NOISE)]
    assert noisy == []
