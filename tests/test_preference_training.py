"""`humpback dpo` / `humpback kto`: QLoRA preference training on CPU, continuing an SFT adapter (M_k)."""

import json
import math

import pytest
import torch
import yaml
from conftest import launch_cpu_processes
from safetensors.torch import load_file
from sft_adapter import make_sft_adapter

from humpback_trl.collators import PROMPT_SETTINGS_FILE
from humpback_trl.scripts import dpo, kto
from humpback_trl.stage_outputs import TRAINING

PROMPTS = [f"What is {i} plus {i}?" for i in range(8)]


def messages(role, text):
    return [{"role": role, "content": text}]


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    return make_sft_adapter(tiny_model_dir, tmp_path_factory.mktemp("m2"))


@pytest.fixture(scope="module")
def dpo_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prefs") / "dpo.jsonl"
    rows = [
        {"prompt": messages("user", p), "chosen": messages("assistant", f"{2 * i}."),
         "rejected": messages("assistant", "I do not know."), "chosen_score": 4.5, "rejected_score": 1.5,
         "source_id": f"d{i}", "chat_template_kwargs": {"date_string": "26 Jul 2024"}}
        for i, p in enumerate(PROMPTS)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def kto_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prefs") / "kto.jsonl"
    # Sorted by label, as a filter would leave them: the trainer must shuffle them for its in-batch KL estimate.
    rows = [
        {"prompt": messages("user", p), "completion": messages("assistant", f"{2 * i}." if i < 4 else "No idea."),
         "label": i < 4, "score": 4.7 if i < 4 else 1.0, "source_id": f"k{i}"}
        for i, p in enumerate(PROMPTS)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def recipe(tmp_path, adapter, data, **overrides):
    config = {
        "dtype": "float32",
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "use_peft": True,
        "sft_adapter": str(adapter),
        "sft_stage": "m2",
        "data": [str(data)],
        "output_dir": str(tmp_path / "out"),
        "use_cpu": True,
        "bf16": False,
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-2,
        "max_length": 128,
        "gradient_checkpointing": False,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
        **overrides,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def lora_weights(folder):
    return load_file(str(folder / "adapter_model.safetensors"))


def check_saved(out, adapter, rows):
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", TRAINING.training_data} <= {
        p.name for p in out.iterdir()
    }
    assert not (out / "ref").exists(), "the frozen reference copy is not part of the artifact"
    assert (out / PROMPT_SETTINGS_FILE).read_text() == (adapter / PROMPT_SETTINGS_FILE).read_text()
    before, after = lora_weights(adapter), lora_weights(out)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k].to(before[k].dtype)) for k in before), "the adapter must train"
    saved = [json.loads(line) for line in (out / TRAINING.training_data).read_text().splitlines()]
    assert len(saved) == rows
    return saved


def first_loss(trainer):
    return next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)


def test_dpo_continues_the_sft_adapter_in_4bit(tmp_path, adapter, dpo_file):
    trainer = dpo.run(["--config", recipe(tmp_path, adapter, dpo_file)])
    layer = trainer.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(layer).__name__ == "Linear4bit"
    # The reference is M_k itself: before the first update policy and reference agree, so the DPO loss is ln 2.
    # 4-bit CPU matmuls leave a little noise between the two forward passes.
    assert first_loss(trainer) == pytest.approx(math.log(2), abs=5e-3)
    saved = check_saved(tmp_path / "out", adapter, rows=8)
    assert set(saved[0]) == {"prompt", "chosen", "rejected", "chosen_score", "rejected_score", "source_id",
                             "chat_template_kwargs"}  # fmt: skip
    card = (tmp_path / "out" / "README.md").read_text()
    # Local paths by their last two parts: no card carries the trainer's home folder.
    local = [f"`{path.parent.name}/{path.name}`" for path in (adapter, dpo_file)]
    assert all(name in card for name in local) and "DPOTrainer" in card
    assert str(tmp_path.parent) not in card
    assert "a frozen copy of M_k's adapter" in card and "4-bit nf4" in card


def test_kto_continues_the_sft_adapter_and_shuffles_the_rows(tmp_path, adapter, kto_file):
    trainer = kto.run(["--config", recipe(tmp_path, adapter, kto_file)])
    # Reference = M_k: every implied reward and the KL estimate start at 0, so each row's loss is 1 - sigmoid(0).
    assert first_loss(trainer) == pytest.approx(0.5, abs=1e-3)
    saved = check_saved(tmp_path / "out", adapter, rows=8)
    labels = [row["label"] for row in saved]
    assert sorted(labels) == sorted([True] * 4 + [False] * 4) and labels != [True] * 4 + [False] * 4
    card = (tmp_path / "out" / "README.md").read_text()
    assert "KTOTrainer" in card and "desirable**: 4" in card and "undesirable**: 4" in card


@pytest.mark.parametrize("kind", ["dpo", "kto"])
def test_two_cpu_processes_train_one_adapter(tmp_path, adapter, request, kind):
    out = tmp_path / "ddp"
    config = recipe(tmp_path, adapter, request.getfixturevalue(f"{kind}_file"), output_dir=str(out))
    result = launch_cpu_processes("-m", f"humpback_trl.scripts.{kind}", "--config", config)
    assert result.returncode == 0, result.stderr[-3000:]
    # 8 rows in batches of 4 x 2 processes take 1 step an epoch, so 2 steps end at epoch 2;
    # one process would take 2 steps an epoch and end at epoch 1.
    assert "'epoch': '2'" in result.stdout
    check_saved(out, adapter, rows=8)


def test_wrong_format_and_unknown_key_fail_with_their_names(tmp_path, adapter, dpo_file):
    with pytest.raises(KeyError, match=r"no column\(s\) \['completion', 'label'\] for KTO"):
        kto.run(["--config", recipe(tmp_path, adapter, dpo_file)])
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(open(recipe(tmp_path, adapter, dpo_file))), "betta": 0.1}))
    with pytest.raises(ValueError, match="betta"):
        dpo.run(["--config", str(config)])


def test_push_names_the_adapter_and_links_mk_and_the_preference_data(tmp_path, adapter, dpo_file, recorded_pushes):
    pushed = recorded_pushes
    config = recipe(tmp_path, adapter, dpo_file, load_in_4bit=False, max_steps=1, hub_prefix="me/hb")
    dpo.run(["--config", config, "--push_to_hub", "true"])
    assert pushed == [("adapter", "me/hb-m2-dpo"), ("model card", "me/hb-m2-dpo"), ("data", "me/hb-m2-dpo-data", 8),
                      ("data card", "me/hb-m2-dpo-data")]  # fmt: skip
    card = (tmp_path / "out" / "README.md").read_text()
    assert "`me/hb-m2`" in card and "`me/hb-preferences-dpo`" in card and "`me/hb-m2-dpo-data`" in card
    assert "- me/hb-preferences-dpo" in card and "- me/hb-m2-dpo-data" in card  # the card's datasets metadata


def test_a_rerun_after_the_last_checkpoint_trains_no_further_step(tmp_path, adapter, dpo_file):
    """What `humpback run --push_to_hub true` does to a finished DPO stage: resume from its final checkpoint,
    save (and push), without a training step; transformers alone would train step max_steps + 1."""
    config = recipe(tmp_path, adapter, dpo_file, save_strategy="steps", save_steps=2, load_in_4bit=False)
    dpo.run(["--config", config])
    first = lora_weights(tmp_path / "out")
    trainer = dpo.run(["--config", config])
    assert trainer.state.global_step == 2
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-2"]
    second = lora_weights(tmp_path / "out")
    assert all(torch.equal(first[key], second[key]) for key in first)
