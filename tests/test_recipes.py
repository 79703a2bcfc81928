"""Every recipe in the repository parses with the parser its stage uses; every referenced file and stage exists."""

import importlib
from pathlib import Path

import pytest
import yaml

from humpback_trl import pipeline
from humpback_trl.dry_run import BUILTIN_SOURCES
from humpback_trl.pairs import BUILTIN_PREFIX, builtin_path
from humpback_trl.scripts import run as run_script

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
MODULES = {
    "backward.yaml": "humpback_trl.scripts.sft",
    "seed.yaml": "humpback_trl.scripts.sft",
    "corpus.yaml": "humpback_trl.scripts.corpus",
    "augment.yaml": "humpback_trl.scripts.augment",
    "magpie.yaml": "humpback_trl.scripts.magpie",
    "curate.yaml": "humpback_trl.scripts.curate",
    # Preference stages (issue 13): `preference: dpo | kto` in the loop, or by hand.
    "preferences.yaml": "humpback_trl.scripts.preferences",
    "dpo.yaml": "humpback_trl.scripts.dpo",
    "kto.yaml": "humpback_trl.scripts.kto",
    # Online training with a calibrated judge as reward (issue 24): `preference: grpo` in the loop, or by hand.
    "grpo.yaml": "humpback_trl.scripts.grpo",
    # Evaluation and judge calibration (issue 10).
    "eval.yaml": "humpback_trl.scripts.eval",
    "calibrate.yaml": "humpback_trl.scripts.calibrate",
    # Back-and-forth translation (issue 21): `rewrite: replace | add` in the loop, or by hand.
    "rewrite.yaml": "humpback_trl.scripts.rewrite",
}
LOOP_FILES = sorted(RECIPES.glob("*/loop*.yaml"))
STAGE_FILES = sorted(p for p in RECIPES.glob("*/*.yaml") if not p.name.startswith("loop"))


def test_every_recipe_file_has_a_stage():
    assert LOOP_FILES and STAGE_FILES
    assert [p for p in STAGE_FILES if p.name not in MODULES] == []
    assert {p.parent.name for p in LOOP_FILES} == {p.parent.name for p in STAGE_FILES}


def parse_stage(module_name, recipe, overrides=()):
    """Parse exactly as the stage does; the GPU recipes get bf16 off, since this machine has no GPU."""
    config = yaml.safe_load(recipe.read_text())
    cpu = ["--bf16", "false"] if config.get("bf16") else []
    module = importlib.import_module(module_name)
    return module.make_parser().parse_args_and_config(["--config", str(recipe), *overrides, *cpu])


def assert_local_reference_exists(name):
    if name.startswith(BUILTIN_PREFIX):
        if name not in BUILTIN_SOURCES:
            assert builtin_path(name[len(BUILTIN_PREFIX) :]).is_file()
    elif name.startswith((".", "/")) or Path(name).suffix:
        assert (ROOT / name).exists(), name
    else:
        assert name.count("/") == 1, f"{name} is neither a local file nor a Hub id"


@pytest.mark.parametrize("preference", ["none", "dpo", "kto", "grpo"])
@pytest.mark.parametrize("loop_file", LOOP_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_loop_and_its_stages_parse(loop_file, preference, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    argv = ["--config", str(loop_file), "--preference", preference, "--output_dir", str(tmp_path)]
    (loop,) = run_script.make_parser().parse_args_and_config(argv)
    assert (ROOT / loop.accelerate_config).is_file()
    stages = pipeline.plan(loop_file.parent, loop)
    names = [stage.name for stage in stages]
    for name in names:  # the adapters that later stages load must exist: a missing local model fails at parse time
        (tmp_path / name).mkdir()
    last = f"m{loop.iterations}" + ("" if preference == "none" else f"-{preference}")
    assert names[:3] == ["corpus", "myx", "augment"] and names[-2:] == [last, "eval"]
    assert names[4:7] == ["curate-1", "m1", "curate-2"] if loop.iterations > 1 else True
    for stage in stages:
        assert all(name in names[: names.index(stage.name)] for name in stage.upstream)
        parse_stage(stage.module, stage.recipe, stage.overrides)
        config = yaml.safe_load(stage.recipe.read_text())
        for name in config.get("data", []) + [config[k] for k in ("source", "oasst_seed") if config.get(k)]:
            assert_local_reference_exists(name)


# What the loop passes a stage on its command line (its inputs), for recipes parsed on their own.
LOOP_INPUTS = {
    "humpback_trl.scripts.augment": ["--corpus", "segments.jsonl", "--adapter", "org/myx"],
    "humpback_trl.scripts.curate": ["--candidates", "candidates.jsonl", "--adapter", "org/m0"],
    "humpback_trl.scripts.preferences": ["--instructions", "i.jsonl", "--scored_pool", "s.jsonl", "--adapter", "o/m2"],
    "humpback_trl.scripts.dpo": ["--data", "dpo.jsonl"],
    "humpback_trl.scripts.kto": ["--data", "kto.jsonl"],
    "humpback_trl.scripts.grpo": ["--prompts", "scored.jsonl"],
    "humpback_trl.scripts.eval": ["--models", "org/m0", "org/m1"],
    "humpback_trl.scripts.rewrite": ["--pairs", "a5.jsonl", "--adapter", "org/m0"],
}


def plain(value):
    """A parsed value as YAML writes it: enums by their value, tuples as lists."""
    value = getattr(value, "value", value)
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("recipe", STAGE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipe_parses_to_the_values_it_writes(recipe, monkeypatch):
    """Each recipe on its own (calibrate.yaml is in no loop): every key lands, with its value, on each dataclass of
    the stage's parser that declares it."""
    monkeypatch.chdir(ROOT)
    module = MODULES[recipe.name]
    parsed = parse_stage(module, recipe, LOOP_INPUTS.get(module, []))
    config = yaml.safe_load(recipe.read_text())
    for key, value in config.items():
        found = [plain(getattr(args, key)) for args in parsed if hasattr(args, key)]
        assert found, f"{recipe}: {key} is on no parsed dataclass"
        if key == "report_to":  # transformers resolves it against the integrations installed here
            continue
        expected = False if key == "bf16" else value  # parse_stage turns bf16 off on this CPU machine
        if key == "lora_target_modules" and len(value) == 1:  # TRL's ModelConfig keeps a single module as a string
            expected = value[0]
        assert found == [expected] * len(found), f"{recipe}: {key}"


def test_unknown_key_in_a_recipe_fails_loudly(tmp_path):
    recipe = tmp_path / "augment.yaml"
    recipe.write_text(
        yaml.safe_dump({**yaml.safe_load((RECIPES / "quickstart/augment.yaml").read_text()), "temprature": 1})
    )
    with pytest.raises(ValueError, match="temprature"):
        parse_stage("humpback_trl.scripts.augment", recipe, ["--corpus", "x.jsonl", "--adapter", "a"])


def test_quickstart_trains_lora_on_the_real_model():
    """The quickstart runs on SmolLM2 (the tiny random model is only an explicit override) with plain LoRA: the
    4-bit CPU path of bitsandbytes is far slower, and a 135M model fits in memory in float32."""
    for name in ("backward.yaml", "seed.yaml", "magpie.yaml"):
        config = yaml.safe_load((RECIPES / "quickstart" / name).read_text())
        assert config["model_name_or_path"] == "builtin:smollm2-135m-instruct", name
        assert not config.get("load_in_4bit"), name
    # The backward model trains at 1e-3 for 40 steps: at 2e-4 for 10 steps it wrote no on-topic instruction (#19).
    for name, peak in (("backward.yaml", 1e-3), ("seed.yaml", 5e-4)):
        config = yaml.safe_load((RECIPES / "quickstart" / name).read_text())
        assert config["use_peft"] and config["learning_rate"] <= peak and config["max_length"] >= 256, name
    (loop,) = run_script.make_parser().parse_args_and_config(["--config", str(RECIPES / "quickstart" / "loop.yaml")])
    assert loop.model is None and loop.backward_model is None and loop.magpie_model is None
