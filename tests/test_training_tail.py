"""One training tail for SFT, DPO and KTO: the same refusal before anything loads, the same save, card and push;
one preference-training script for two commands; the SelfCurationCallback on a trainer through the Python API."""

import json

import pytest
import yaml
from datasets import Dataset
from sft_adapter import make_sft_adapter

from humpback_trl import SelfCurationCallback, training
from humpback_trl.cli import run_command
from humpback_trl.curation import CurationSettings
from humpback_trl.errors import UserError
from humpback_trl.pairs import PAIR_FEATURES, make_pair
from humpback_trl.preference_training import HumpbackDPOTrainer, HumpbackKTOTrainer
from humpback_trl.scripts import dpo, kto, preference_trainer, sft

TOKEN = "hf_secretsecretsecret"
PROMPT = [{"role": "user", "content": "What is 2 plus 2?"}]
ROWS = {
    "dpo": {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": "4."}],
            "rejected": [{"role": "assistant", "content": "No."}]},
    "kto": {"prompt": PROMPT, "completion": [{"role": "assistant", "content": "4."}], "label": True},
}  # fmt: skip


def argv_for(kind, tmp_path, tiny_model_dir):
    """A command line that would train for one step, were the token not refused first."""
    common = {"output_dir": str(tmp_path / "out"), "use_cpu": True, "bf16": False, "max_steps": 1,
              "report_to": "none", "use_peft": True, "lora_r": 4}  # fmt: skip
    if kind == "sft":
        config = {**common, "model_name_or_path": str(tiny_model_dir), "data": ["builtin:seed"]}
    else:
        data = tmp_path / f"{kind}.jsonl"
        data.write_text(json.dumps(ROWS[kind]) + "\n")
        adapter = make_sft_adapter(tiny_model_dir, tmp_path / "m2")
        config = {**common, "model_name_or_path": str(tiny_model_dir), "sft_adapter": str(adapter), "data": [str(data)]}
    recipe = tmp_path / f"{kind}.yaml"
    recipe.write_text(yaml.safe_dump(config))
    return ["--config", str(recipe), "--hub_token", TOKEN]


@pytest.mark.parametrize("kind", ["sft", "dpo", "kto"])
def test_every_trainer_refuses_a_hub_token_before_training_and_writes_it_nowhere(
    kind, tmp_path, tiny_model_dir, capsys, monkeypatch
):
    def no_training(*args, **kwargs):
        raise AssertionError("nothing may train or load with a Hub token given")

    monkeypatch.setattr(training, "resume_and_train", no_training)
    with pytest.raises(SystemExit) as exit_info:
        run_command(kind, argv_for(kind, tmp_path, tiny_model_dir))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"humpback {kind}: error: hub_token is refused: ")
    assert not (tmp_path / "out").exists()
    assert not [path for path in tmp_path.rglob("*") if path.is_file() and TOKEN.encode() in path.read_bytes()]


@pytest.mark.parametrize("kind", ["dpo", "kto"])
def test_preference_trainers_check_the_scheduler_and_lora_targets_before_the_weights(
    kind, tmp_path, tiny_model_dir, monkeypatch
):
    def no_loading(*args, **kwargs):
        raise AssertionError("no weight may load")

    monkeypatch.setattr("humpback_trl.preference_training.AutoTokenizer.from_pretrained", no_loading)
    data = tmp_path / f"{kind}.jsonl"
    data.write_text(json.dumps(ROWS[kind]) + "\n")
    run = dpo.run if kind == "dpo" else kto.run
    common = ["--model_name_or_path", str(tiny_model_dir), "--data", str(data), "--output_dir", str(tmp_path / "out"),
              "--use_cpu", "true", "--bf16", "false", "--use_peft", "true"]  # fmt: skip
    with pytest.raises(UserError, match=r"lr_scheduler_kwargs \{'min_lr_rato': 0.1\} do not fit .*cosine_with_min_lr"):
        run([*common, "--lr_scheduler_type", "cosine_with_min_lr", "--lr_scheduler_kwargs", '{"min_lr_rato": 0.1}'])
    with pytest.raises(UserError, match=r"lora_target_modules \['v_prj'\] match no module"):
        run([*common, "--lora_target_modules", "q_proj", "v_prj"])


def test_dpo_and_kto_are_one_script_with_the_shared_tail():
    assert dpo.run.func is kto.run.func is preference_trainer.run
    assert dpo.make_parser().dataclass_types[1].__name__ == "DPOConfig"
    assert kto.make_parser().dataclass_types[1].__name__ == "KTOConfig"
    for trainer in (training.HumpbackSFTTrainer, HumpbackDPOTrainer, HumpbackKTOTrainer):
        assert issubclass(trainer, training.ExactResumeMixin) and issubclass(trainer, training.PortableSaveMixin)


def test_sft_has_no_curation_options():
    options = {action.dest for action in sft.make_parser()._actions}
    assert not options & {"curate_candidates", "curation_output_dir", "curation_mode", "curation_threshold"}


def test_the_self_curation_callback_scores_a_pool_when_a_trainer_ends(tmp_path, tiny_model_dir):
    """The public Python API: any trainer carries the callback; `training.train` passes it to SFTTrainer."""
    rows = [make_pair(f"Add {i} and {i}.", f"{2 * i}.", "augmented", f"c{i}") for i in range(3)]
    callback = SelfCurationCallback(
        Dataset.from_list(rows, features=PAIR_FEATURES),
        tmp_path / "_curation",
        CurationSettings(calibration_dev_set=None),
        scorer="m0",
    )
    seed = tmp_path / "seed.jsonl"
    seed.write_text("".join(json.dumps({"instruction": f"Add {i}.", "output": f"{i}."}) + "\n" for i in range(4)))
    config = ["--model_name_or_path", str(tiny_model_dir), "--data", str(seed), "--output_dir",
              str(tmp_path / "m0"), "--use_cpu", "true", "--bf16", "false", "--max_steps", "1",
              "--per_device_train_batch_size", "2", "--max_length", "128", "--report_to", "none",
              "--use_peft", "true", "--lora_r", "4", "--save_strategy", "no"]  # fmt: skip
    script_args, training_args, model_args = sft.make_parser().parse_args_and_config(config)
    trainer = training.train(script_args, training_args, model_args, callbacks=[callback])
    assert trainer.model.training, "training mode is restored after scoring"
    assert callback.summary["candidates"] == 3 and callback.summary["iteration"] == 1
    scored = [json.loads(line) for line in (tmp_path / "_curation" / "scored.jsonl").read_text().splitlines()]
    assert [row["source_id"] for row in scored] == ["c0", "c1", "c2"] and {row["scorer"] for row in scored} == {"m0"}
    assert all(1 <= row["score"] <= 5 for row in scored)
