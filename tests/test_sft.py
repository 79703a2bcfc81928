"""The SFT entry point end to end on CPU: QLoRA on a tiny model, cards and data on disk, recipes parsed strictly."""

import json
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from conftest import launch_cpu_processes
from peft import AutoPeftModelForCausalLM, get_peft_model_state_dict

from humpback_trl import training
from humpback_trl.chat_template import encode
from humpback_trl.schedule import LORA_LEARNING_RATE, paper_batch_size, paper_steps
from humpback_trl.scripts import sft
from humpback_trl.stage_outputs import TRAINING

PAIRS = [
    {
        "instruction": f"Question number {i}: what is {i} plus {i}?",
        "output": f"The answer is {2 * i}. " * 3,
        "id": f"p{i}",
    }
    for i in range(24)
] + [{"instruction": "   ", "output": "rejected: blank instruction", "id": "blank"}]


@pytest.fixture(scope="module")
def tiny_path(tiny_model_dir):
    return tiny_model_dir


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return path


def recipe(tmp_path, tiny_path, data_path, **overrides):
    config = {
        "model_name_or_path": str(tiny_path),
        "dtype": "float32",
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "use_bnb_nested_quant": True,
        "use_peft": True,
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_target_modules": ["all-linear"],
        "data": [str(data_path)],
        "id_column": "id",
        "direction": "backward",
        "output_dir": str(tmp_path / "out"),
        "use_cpu": True,
        "bf16": False,
        "max_steps": 12,
        "per_device_train_batch_size": 8,
        "learning_rate": 5e-3,
        "lr_scheduler_type": "constant",
        "max_length": 256,
        "activation_checkpointing": False,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
        **overrides,
    }
    path = tmp_path / "recipe.yaml"
    # An override of None leaves the key out of the recipe (the schedule then sets it).
    path.write_text(yaml.safe_dump({key: value for key, value in config.items() if value is not None}))
    return str(path)


def test_qlora_backward_trains_saves_and_reloads(tmp_path, tiny_path, data_path):
    trainer = sft.run(["--config", recipe(tmp_path, tiny_path, data_path)])
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])
    layer = trainer.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(layer).__name__ == "Linear4bit"

    out = tmp_path / "out"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    saved = [json.loads(line) for line in (out / TRAINING.training_data).read_text().splitlines()]
    assert len(saved) == 24 and saved[0]["source_id"] == "p0" and "blank" not in {r["source_id"] for r in saved}
    card = (out / "README.md").read_text()
    # A local base is named by its last two path parts, never by the trainer's absolute path.
    shown = str(Path(*Path(tiny_path).parts[-2:]))
    assert f"`{shown}`" in card and str(tiny_path) not in card and "**Direction**: backward" in card
    assert "Source tagging**: off" in card and "rejected (empty instruction or output)**: 1" in card

    # The saved adapter reloads to exactly the trained LoRA weights, and it changes what the base model predicts.
    model = AutoPeftModelForCausalLM.from_pretrained(str(out))
    trained, reloaded = get_peft_model_state_dict(trainer.model), get_peft_model_state_dict(model)
    assert trained.keys() == reloaded.keys() and len(trained) == 2 * 7 * 2  # A and B, 7 linear layers, 2 blocks
    assert all(torch.equal(trained[key].cpu(), reloaded[key]) for key in trained)
    ids = torch.tensor([encode(trainer.processing_class, "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n")])
    with torch.no_grad():
        adapted = model(ids).logits
        with model.disable_adapter():
            base = model(ids).logits
    assert (adapted - base).abs().max() > 1e-3


def test_paper_schedule_ends_at_the_floor(tmp_path, tiny_path, data_path):
    config = recipe(
        tmp_path,
        tiny_path,
        data_path,
        load_in_4bit=False,
        max_steps=5,
        direction="forward",
        paper_schedule=True,
        per_device_train_batch_size=4,
        learning_rate=None,
        lr_scheduler_type=None,
    )
    trainer = sft.run(["--config", config])
    args = trainer.args
    assert (args.gradient_accumulation_steps, args.weight_decay) == (2, 0.1)  # batch 8 under 3,000 examples
    # A LoRA adapter: the QLoRA paper's peak, decaying linearly to 90% of it.
    assert args.learning_rate == LORA_LEARNING_RATE
    lrs = [trainer.lr_scheduler.lr_lambdas[0](step) * LORA_LEARNING_RATE for step in range(5)]
    assert lrs == pytest.approx([2e-4, 1.95e-4, 1.9e-4, 1.85e-4, 1.8e-4], rel=1e-9)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1.8e-4, rel=1e-9)


def test_paper_table():
    assert [paper_steps(n) for n in (50, 100, 101, 3200, 40000, 10**6)] == [30, 30, 300, 500, 1600, 1600]
    assert (paper_batch_size(2999), paper_batch_size(3000)) == (8, 32)


def test_unknown_recipe_key_fails_with_its_name(tmp_path, tiny_path, data_path):
    config = tmp_path / "bad.yaml"
    config.write_text(
        yaml.safe_dump({**yaml.safe_load(open(recipe(tmp_path, tiny_path, data_path))), "lerning_rate": 1})
    )
    with pytest.raises(ValueError, match="lerning_rate"):
        sft.run(["--config", str(config)])


def test_resume_continues_from_the_last_checkpoint(tmp_path, tiny_path, data_path):
    config = recipe(
        tmp_path, tiny_path, data_path, load_in_4bit=False, save_strategy="steps", save_steps=3, max_steps=3
    )
    sft.run(["--config", config])
    trainer = sft.run(["--config", config, "--max_steps", "6"])
    steps = [entry["step"] for entry in trainer.state.log_history if "loss" in entry]
    assert steps == [1, 2, 3, 4, 5, 6] and trainer.state.global_step == 6
    assert (tmp_path / "out" / "checkpoint-6").is_dir()


def test_two_cpu_processes_train_one_adapter(tmp_path, tiny_path, data_path):
    out = tmp_path / "ddp"
    config = recipe(tmp_path, tiny_path, data_path)
    result = launch_cpu_processes(
        "-m", "humpback_trl.scripts.sft", "--config", config, "--output_dir", str(out), "--max_steps", "3"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    # 24 pairs in batches of 8 rows x 2 processes take 2 steps an epoch, so 3 steps end at epoch 1.5;
    # one process would take 3 steps an epoch and end at epoch 1.
    assert "'epoch': '1.5'" in result.stdout
    assert "find_unused_parameters" not in result.stderr  # set to False for LoRA: no DDP search, no warning
    assert len(list(out.glob("adapter_model.safetensors"))) == 1


def test_push_names_the_adapter_and_training_set_after_the_prefix(tmp_path, tiny_path, data_path, recorded_pushes):
    """The real push calls, recorded instead of sent: an upload needs the network and a token."""
    pushed = recorded_pushes
    unset = {"activation_checkpointing": None}
    config = recipe(tmp_path, tiny_path, data_path, load_in_4bit=False, max_steps=1, hub_prefix="me/hb", **unset)
    # The filters in force, as a run has them (pytest's recwarn would show every warning, filtered or not).
    with warnings.catch_warnings(record=True) as caught:
        trainer = sft.run(["--config", config, "--push_to_hub", "true"])
    # TRL's default (checkpointing on) through the current option name: no deprecation warning on the way.
    assert trainer.args.activation_checkpointing is True
    assert not [str(w.message) for w in caught if "checkpointing` is deprecated" in str(w.message)]
    # DDP would search every step for the frozen base weights' gradients; a user's value is kept.
    assert trainer.args.ddp_find_unused_parameters is False
    assert pushed == [("adapter", "me/hb-myx"), ("model card", "me/hb-myx"), ("data", "me/hb-myx-data", 24),
                      ("data card", "me/hb-myx-data")]  # fmt: skip
    card = (tmp_path / "out" / "README.md").read_text()
    assert "datasets:\n- me/hb-myx-data" in card and "`me/hb-myx-data`" in card


def test_a_missing_local_model_fails_at_once_naming_the_option(tmp_path, tiny_path, data_path):
    config = recipe(tmp_path, tiny_path, data_path, model_name_or_path=str(tmp_path / "no-such-model"))
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=f"^model_name_or_path: no such folder {tmp_path}/no-such-model"):
        sft.run(["--config", config])
    assert time.perf_counter() - start < 5  # the Hub client retried such a name for about a minute


def test_a_wrong_scheduler_key_or_lora_target_fails_before_the_model_loads(tmp_path, tiny_path, data_path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the trainer (and its model) must not be built")

    monkeypatch.setattr(training.HumpbackSFTTrainer, "__init__", no_loading)
    config = recipe(
        tmp_path, tiny_path, data_path, lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rato": 0.1}
    )
    with pytest.raises(ValueError, match=r"lr_scheduler_kwargs \{'min_lr_rato': 0.1\} do not fit .*cosine_with_min_lr"):
        sft.run(["--config", config])
    config = recipe(tmp_path, tiny_path, data_path, lora_target_modules=["q_proj", "v_prj"])
    with pytest.raises(ValueError, match=r"lora_target_modules \['v_prj'\] match no module .* \[.*'v_proj'\]"):
        sft.run(["--config", config])


def test_a_wrong_model_init_kwargs_key_is_one_error_naming_the_option(tmp_path, tiny_path, data_path):
    config = recipe(tmp_path, tiny_path, data_path, model_init_kwargs={"atn_implementation": "eager"})
    with pytest.raises(ValueError, match=r"^model_init_kwargs: .*unexpected keyword argument 'atn_implementation'"):
        sft.run(["--config", config])


def test_a_user_ddp_setting_is_kept(tmp_path, tiny_path, data_path):
    args = sft.make_parser().parse_args_and_config(
        ["--config", recipe(tmp_path, tiny_path, data_path), "--ddp_find_unused_parameters", "true"]
    )
    script_args, training_args, model_args = args
    training.configure(training_args, script_args, model_args, num_examples=24)
    assert training_args.ddp_find_unused_parameters is True
