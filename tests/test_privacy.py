"""Every publishing path sends `hub_private_repo` to the Hub: the `private` flag each recorded Hub call received (not a
flag set on the test's own objects), private and public, and the visibility each dataset card states."""

import json

import pytest
import yaml
from sft_adapter import make_sft_adapter

from humpback_trl import training
from humpback_trl.callbacks import SelfCurationCallback
from humpback_trl.curation import CurationSettings
from humpback_trl.pairs import load_pairs
from humpback_trl.scripts import augment, curate, dpo, kto, magpie, preferences, sft

PRIVATE = "**Visibility on the Hub**: private"
PUBLIC = "**Visibility on the Hub**: public"
PAIRS = [{"instruction": f"What is {i} plus {i}?", "output": f"It is {2 * i}.", "id": f"p{i}"} for i in range(8)]
SEGMENTS = [{"segment_id": f"doc{i}", "text": f"Tide table {i} lists high and low water."} for i in range(4)]
PRIVACY = pytest.mark.parametrize("private", [True, False], ids=["private", "public"])


def flag(private: bool) -> list[str]:
    return ["--hub_private_repo", str(private).lower()]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def assert_data_pushed(pushes, repos: list[str], private: bool) -> None:
    """Each data repo got the flag, and its card (pushed right after it) says the same."""
    assert pushes.private("data") == [(repo, private) for repo in repos]
    cards = [call for call in pushes.calls if call.what == "data card"]
    assert [call.repo for call in cards] == repos
    assert all((PRIVATE if private else PUBLIC) in call.card for call in cards)


@pytest.fixture(scope="module")
def sft_adapter(tiny_model_dir, tmp_path_factory):
    return make_sft_adapter(tiny_model_dir, tmp_path_factory.mktemp("m1"))


def sft_recipe(tmp_path, tiny_model_dir, **extra):
    config = {
        "model_name_or_path": str(tiny_model_dir), "use_peft": True, "lora_r": 4, "lora_target_modules": ["all-linear"],
        "data": [str(write_jsonl(tmp_path / "pairs.jsonl", PAIRS))], "id_column": "id", "direction": "forward",
        "output_dir": str(tmp_path / "m0"), "use_cpu": True, "bf16": False, "max_steps": 1,
        "per_device_train_batch_size": 4, "save_strategy": "no", "report_to": "none", "hub_prefix": "me/hb", **extra,
    }  # fmt: skip
    path = tmp_path / "m0.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@PRIVACY
def test_sft_adapter_repo_and_training_set(tmp_path, tiny_model_dir, recorded_pushes, private):
    sft.run(["--config", sft_recipe(tmp_path, tiny_model_dir), "--push_to_hub", "true", *flag(private)])
    # transformers' own init_hf_repo creates the adapter's repo with the flag; the training set follows it.
    assert recorded_pushes.private("adapter repo") == [("me/hb-m0", private)]
    assert_data_pushed(recorded_pushes, ["me/hb-m0-data"], private)


@PRIVACY
def test_curated_splits_of_the_self_curation_callback(tmp_path, tiny_model_dir, recorded_pushes, private):
    """The Python API: the callback on an SFT run, publishing its splits as the run publishes its adapter."""
    candidates, _ = load_pairs(
        str(write_jsonl(tmp_path / "candidates.jsonl", [{**row, "source_id": row["id"]} for row in PAIRS])),
        default_source="augmented",
    )
    parsed = sft.make_parser().parse_args_and_config(
        ["--config", sft_recipe(tmp_path, tiny_model_dir), "--push_to_hub", "true", *flag(private)]
    )
    script_args, training_args, model_args = parsed[:3]
    callback = SelfCurationCallback(
        candidates, tmp_path / "curation", CurationSettings(calibration_dev_set=None), scorer="me/hb-m0",
        hub_repo="me/hb-curated-1", private=training_args.hub_private_repo,
    )  # fmt: skip
    training.train(script_args, training_args, model_args, callbacks=[callback])
    assert recorded_pushes.private("adapter repo") == [("me/hb-m0", private)]
    assert_data_pushed(recorded_pushes, ["me/hb-curated-1", "me/hb-m0-data"], private)
    assert [call.rows for call in recorded_pushes.calls if call.what == "data"][0]["scored"] == 8


def preference_recipe(tmp_path, adapter, kind):
    prompt = [{"role": "user", "content": "What is 2 plus 2?"}]
    answer = [{"role": "assistant", "content": "4."}]
    rows = (
        [{"prompt": prompt, "chosen": answer, "rejected": [{"role": "assistant", "content": "No."}]}] * 4
        if kind == "dpo"
        else [{"prompt": prompt, "completion": answer, "label": i % 2 == 0} for i in range(4)]
    )
    config = {
        "use_peft": True, "sft_adapter": str(adapter), "sft_stage": "m1",
        "data": [str(write_jsonl(tmp_path / f"{kind}.jsonl", rows))], "output_dir": str(tmp_path / "out"),
        "use_cpu": True, "bf16": False, "max_steps": 1, "per_device_train_batch_size": 4, "max_length": 64,
        "gradient_checkpointing": False, "save_strategy": "no", "report_to": "none", "hub_prefix": "me/hb",
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@PRIVACY
@pytest.mark.parametrize("kind", ["dpo", "kto"])
def test_preference_training_adapter_repo_and_training_set(tmp_path, sft_adapter, recorded_pushes, kind, private):
    script = {"dpo": dpo, "kto": kto}[kind]
    script.run(["--config", preference_recipe(tmp_path, sft_adapter, kind), "--push_to_hub", "true", *flag(private)])
    assert recorded_pushes.private("adapter repo") == [(f"me/hb-m1-{kind}", private)]
    assert_data_pushed(recorded_pushes, [f"me/hb-m1-{kind}-data"], private)


HUB = ["--hub_prefix", "me/hb", "--push_to_hub", "true"]


@PRIVACY
def test_candidates(tmp_path, tiny_model_dir, recorded_pushes, private):
    corpus = write_jsonl(tmp_path / "segments.jsonl", SEGMENTS)
    written = augment.run(
        ["--corpus", str(corpus), "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "aug"),
         "--max_new_tokens", "4", *HUB, *flag(private)]
    )  # fmt: skip
    assert_data_pushed(recorded_pushes, ["me/hb-candidates"], private)
    assert recorded_pushes.calls[0].rows == len(written)


@PRIVACY
def test_curated_splits_of_the_curate_stage(tmp_path, tiny_model_dir, recorded_pushes, private):
    candidates = write_jsonl(
        tmp_path / "candidates.jsonl",
        [{**row, "source": "augmented", "source_id": row.pop("id")} for row in map(dict, PAIRS)],
    )
    curate.run(
        ["--candidates", str(candidates), "--model_name_or_path", str(tiny_model_dir), "--output_dir",
         str(tmp_path / "cur"), "--calibration_dev_set", "none", "--iteration", "2", *HUB, *flag(private)]
    )  # fmt: skip
    assert_data_pushed(recorded_pushes, ["me/hb-curated-2"], private)


@PRIVACY
def test_magpie_pairs_and_their_curated_splits(tmp_path, tiny_model_dir, recorded_pushes, private):
    magpie.run(
        ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "magpie"), "--num_samples", "4",
         "--instruction_max_new_tokens", "8", "--response_max_new_tokens", "4", "--min_instruction_chars", "0",
         "--curate", "true", "--calibration_dev_set", "none", *HUB, *flag(private)]
    )  # fmt: skip
    assert_data_pushed(recorded_pushes, ["me/hb-magpie-curated", "me/hb-magpie"], private)


@PRIVACY
def test_preference_data(tmp_path, sft_adapter, recorded_pushes, private):
    pool = write_jsonl(
        tmp_path / "scored.jsonl",
        [{"instruction": f"Explain tide table {i}.", "output": f"Table {i} lists the tides.", "source": "augmented",
          "source_id": f"doc{i}", "score": score, "score_mass": 0.9} for i, score in enumerate([4.6, 1.0])],
    )  # fmt: skip
    preferences.run(
        ["--kind", "kto", "--adapter", str(sft_adapter), "--scored_pool", str(pool), "--output_dir",
         str(tmp_path / "kto"), *HUB, *flag(private)]
    )  # fmt: skip
    assert_data_pushed(recorded_pushes, ["me/hb-preferences-kto"], private)
