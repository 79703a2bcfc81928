"""Each part of the loop's stage hash: a change that alters a stage's result reruns it (and what depends on it), a
change that does not (where results go, how a run is launched or watched) reruns nothing."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from humpback_trl import pipeline

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart"
CPU_CONFIG = ROOT / "accelerate_configs" / "cpu.yaml"
# Every stage of the quickstart loop after the backward model's.
AFTER_M0 = {"curate-1", "m1", "curate-2", "m2", "eval"}


@pytest.fixture()
def recipes(tmp_path) -> Path:
    folder = tmp_path / "recipes"
    shutil.copytree(QUICKSTART, folder)
    shutil.copy(CPU_CONFIG, folder / "accelerate.yaml")
    return folder


def loop_of(recipes: Path, **changes) -> pipeline.LoopArguments:
    values = {**yaml.safe_load((recipes / "loop.yaml").read_text()), "accelerate_config": "accelerate.yaml"}
    return pipeline.LoopArguments(**{**values, "output_dir": str(recipes.parent / "out"), **changes})


def hashes(recipes: Path, loop: pipeline.LoopArguments) -> dict[str, str]:
    """Every stage's hash, as run_loop computes them before any stage runs."""
    config = pipeline.find_accelerate_config(loop.accelerate_config, recipes)
    found: dict[str, str] = {}
    for stage in pipeline.plan(recipes, loop):
        found[stage.name] = pipeline.stage_hash(stage, loop, config, [found[name] for name in stage.upstream], {})
    return found


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    assert before.keys() == after.keys()
    return {name for name in before if before[name] != after[name]}


def edit(path: Path, **values) -> None:
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **values}))


def test_accelerate_config_values_count_and_its_launch_keys_do_not(recipes):
    loop = loop_of(recipes)
    before = hashes(recipes, loop)
    config = recipes / "accelerate.yaml"
    launch = {"num_processes": 4, "num_machines": 2, "machine_rank": 1, "main_process_ip": "10.0.0.1", "debug": True,
              "main_process_port": 29555, "same_network": False, "rdzv_backend": "c10d", "gpu_ids": "0,1",
              "main_training_function": "train"}  # fmt: skip
    edit(config, **launch)
    assert changed(before, hashes(recipes, loop)) == set()
    edit(config, mixed_precision="bf16")
    assert changed(before, hashes(recipes, loop)) == set(before)


def test_run_name_and_where_results_go_rerun_nothing(recipes):
    loop = loop_of(recipes)
    before = hashes(recipes, loop)
    for name in ("seed.yaml", "backward.yaml", "curate.yaml"):
        edit(recipes / name, run_name="another-name", output_dir="elsewhere")
    assert changed(before, hashes(recipes, loop)) == set()
    edit(recipes / "seed.yaml", seed=43)
    assert changed(before, hashes(recipes, loop)) == {"m0"} | AFTER_M0


def test_a_local_model_folder_is_hashed_by_its_files(recipes, tmp_path):
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"a": 1}')
    (model / "sub" / "weights.bin").write_bytes(b"\x00\x01")
    edit(recipes / "seed.yaml", model_name_or_path=str(model))
    loop = loop_of(recipes)
    before = hashes(recipes, loop)
    for file in model.rglob("*"):
        file.touch()  # new times, same content
    (model / "config.json").write_text('{"a": 1}')
    assert changed(before, hashes(recipes, loop)) == set()
    (model / "sub" / "weights.bin").write_bytes(b"\x00\x02")
    assert changed(before, hashes(recipes, loop)) == {"m0"} | AFTER_M0
    (model / "sub" / "weights.bin").write_bytes(b"\x00\x01")
    (model / "sub" / "extra.bin").write_bytes(b"")  # a file more, even empty
    assert changed(before, hashes(recipes, loop)) == {"m0"} | AFTER_M0


def test_builtin_inputs_are_hashed_by_name_wherever_they_resolve(recipes, tmp_path, monkeypatch):
    loop = loop_of(recipes)
    before = hashes(recipes, loop)
    monkeypatch.setenv("HUMPBACK_CACHE", str(tmp_path / "another-cache"))  # where builtin models are converted to
    monkeypatch.chdir(tmp_path)
    assert changed(before, hashes(recipes, loop)) == set()
    edit(recipes / "seed.yaml", data=["builtin:seed", "builtin:python-docs"])
    assert changed(before, hashes(recipes, loop)) == {"m0"} | AFTER_M0
    edit(recipes / "seed.yaml", data=["builtin:seed"], model_name_or_path="builtin:tiny-llama")
    assert changed(before, hashes(recipes, loop)) == {"m0"} | AFTER_M0


def test_a_fixed_judge_replaces_m_k_as_the_curate_stages_input(recipes):
    plain = loop_of(recipes)
    judged = loop_of(recipes, judge_model="org/judge")
    stages = {stage.name: stage for stage in pipeline.plan(recipes, judged)}
    assert stages["curate-1"].upstream == ["augment"] and stages["curate-2"].upstream == ["augment"]
    values = pipeline.override_values(stages["curate-2"].overrides)
    assert values["model_name_or_path"] == "org/judge" and "adapter" not in values
    before, with_judge = hashes(recipes, plain), hashes(recipes, judged)
    assert changed(before, with_judge) == AFTER_M0
    assert changed(with_judge, hashes(recipes, loop_of(recipes, judge_model="org/judge-2"))) == AFTER_M0
    # M0's recipe no longer decides curate-1: only the models it trains rerun.
    edit(recipes / "seed.yaml", seed=43)
    assert changed(with_judge, hashes(recipes, judged)) == {"m0", "m1", "m2", "eval"}
    assert changed(before, hashes(recipes, plain)) == {"m0"} | AFTER_M0


def test_magpie_seed_feeds_every_forward_model_and_candidates_feeds_curation(recipes):
    seed_use, pool_use = loop_of(recipes, magpie="seed"), loop_of(recipes, magpie="candidates")
    stages = {stage.name: stage for stage in pipeline.plan(recipes, seed_use)}
    magpie_pairs = str(Path(seed_use.output_dir) / "magpie" / "magpie.jsonl")
    for name in ("m0", "m1", "m2"):
        assert "magpie" in stages[name].upstream
        assert magpie_pairs in pipeline.override_values(stages[name].overrides)["data"]
    assert "magpie" not in stages["curate-1"].upstream
    before_seed, before_pool = hashes(recipes, seed_use), hashes(recipes, pool_use)
    assert changed(before_seed, before_pool) == {"m0", "curate-1", "m1", "curate-2", "m2", "eval"}
    edit(recipes / "magpie.yaml", num_samples=7)
    assert changed(before_seed, hashes(recipes, seed_use)) == {"magpie", "m0"} | AFTER_M0
    assert changed(before_pool, hashes(recipes, pool_use)) == {"magpie"} | AFTER_M0


def test_a_stage_marker_records_the_hash_a_rerun_compares(recipes, tmp_path):
    """The hash reaches the marker through run_stage, and a same-hash marker is what skips a stage."""
    loop = loop_of(recipes)
    stage = pipeline.plan(recipes, loop)[0]
    digest = hashes(recipes, loop)[stage.name]
    marker = pipeline.marker_path(loop, stage)
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"hash": digest, "status": "done", "seconds": 1.0, "pushed": []}))
    assert pipeline.decide(pipeline.read_marker(marker), digest, False, loop, stage) == "skip"
    assert pipeline.decide(pipeline.read_marker(marker), "0" * 16, False, loop, stage) == "run"
