"""`humpback run FOLDER --dry_run`: every recipe of the repository checks out offline, and each kind of mistake is
reported beside its stage, with nothing run, loaded or written."""

import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from transformers import AutoModelForCausalLM

from humpback_trl import builtin_models
from humpback_trl.cli import run_command
from humpback_trl.errors import UserError
from humpback_trl.pipeline import plan
from humpback_trl.scripts import run

LOOPS = sorted(
    [path.parent for path in ROOT.glob("recipes/*/loop.yaml")] + list(ROOT.glob("recipes/*/loop_multi_gpu.yaml"))
)


@pytest.fixture(autouse=True)
def nothing_is_loaded(monkeypatch):
    """A dry run never loads weights nor converts a built-in model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the dry run loaded a model")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(builtin_models, "gguf_model_path", refuse)
    monkeypatch.setattr(builtin_models, "tiny_model_path", refuse)


def test_there_are_recipe_folders_to_check():
    names = [str(path.relative_to(ROOT)) for path in LOOPS]
    assert {"recipes/quickstart", "recipes/llama-3.1-8b", "recipes/llama-3.1-8b/loop_multi_gpu.yaml"} <= set(names)


@pytest.mark.parametrize("target", LOOPS, ids=lambda path: str(path.relative_to(ROOT / "recipes")))
def test_every_recipe_folder_checks_out_and_prints_each_stage_in_order(target, tmp_path, capsys):
    out = tmp_path / "out"
    commands = run.run([str(target), "--dry_run", "--output_dir", str(out)])
    printed = capsys.readouterr().out
    folder = target.parent if target.suffix == ".yaml" else target
    (loop,) = run.make_parser().parse_args_and_config(
        ["--config", str(target if target.suffix == ".yaml" else target / "loop.yaml"), "--output_dir", str(out)]
    )
    stages = plan(folder, loop)
    assert [command[command.index("-m") + 1] for command in commands] == [stage.module for stage in stages]
    lines = [line for line in printed.splitlines() if line.startswith("[humpback] ") and ". " in line[:16]]
    assert [line.split(":")[0] for line in lines] == [f"[humpback] {i}. {s.name}" for i, s in enumerate(stages, 1)]
    assert all(command[:2] == ["accelerate", "launch"] for command in commands)
    assert "problem" not in printed and f"dry run: {len(stages)} stages parse" in printed
    assert not out.exists(), "a dry run writes nothing"


@pytest.fixture()
def quickstart(tmp_path) -> Path:
    folder = tmp_path / "recipes"
    shutil.copytree(ROOT / "recipes" / "quickstart", folder)
    return folder


def edit(path: Path, **values) -> None:
    recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    path.write_text(yaml.safe_dump({**recipe, **values}), encoding="utf-8")


def dry_run_problems(folder: Path, tmp_path: Path, capsys, *options: str) -> tuple[str, list[str]]:
    with pytest.raises(UserError, match=r"^dry run: \d+ problem") as error:
        run.run([str(folder), "--dry_run", "--output_dir", str(tmp_path / "out"), *options])
    printed = capsys.readouterr().out
    return str(error.value), [line.strip() for line in printed.splitlines() if line.strip().startswith("problem:")]


def test_an_unknown_key_fails_in_each_stage_that_reads_the_recipe(quickstart, tmp_path, capsys):
    edit(quickstart / "curate.yaml", curation_treshold=4)
    message, problems = dry_run_problems(quickstart, tmp_path, capsys)
    assert message.startswith("dry run: 2 problem(s), the first: curate-1: ")
    assert len(problems) == 2 and all("curate.yaml" in p and "--curation_treshold" in p for p in problems)


def test_missing_local_inputs_and_unknown_built_in_names_are_named(quickstart, tmp_path, capsys):
    edit(quickstart / "backward.yaml", data=["./no-such-seed.jsonl"])
    edit(quickstart / "eval.yaml", instructions="builtin:evaluation")
    _, problems = dry_run_problems(quickstart, tmp_path, capsys)
    assert any("no-such-seed.jsonl" in problem for problem in problems)
    assert any(
        "'builtin:evaluation' is no built-in name" in problem
        and all(f"builtin:{name}'" in problem for name in ("eval", "python-docs", "python-stdlib"))
        for problem in problems
    )


def test_hub_ids_are_checked_by_syntax_only(quickstart, tmp_path, capsys):
    edit(quickstart / "backward.yaml", model_name_or_path="some-org/some-model")
    run.run([str(quickstart), "--dry_run", "--output_dir", str(tmp_path / "out")])
    assert "model_name_or_path=some-org/some-model (Hub id (not looked up: offline))" in capsys.readouterr().out
    edit(quickstart / "backward.yaml", model_name_or_path="some org/some model!")
    _, problems = dry_run_problems(quickstart, tmp_path, capsys)
    assert problems and "some org/some model!" in problems[0]


def test_the_accelerate_config_is_read_by_accelerate(quickstart, tmp_path, capsys):
    config = yaml.safe_load((ROOT / "accelerate_configs" / "multi_gpu.yaml").read_text(encoding="utf-8"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**config, "num_gpus": 8}), encoding="utf-8")
    message, _ = dry_run_problems(quickstart, tmp_path, capsys, "--accelerate_config", str(bad))
    assert "unknown keys (['num_gpus'])" in message
    two_nodes = tmp_path / "two_nodes.yaml"
    two_nodes.write_text(yaml.safe_dump({**config, "num_machines": 2}), encoding="utf-8")
    message, _ = dry_run_problems(quickstart, tmp_path, capsys, "--accelerate_config", str(two_nodes))
    assert f"accelerate_config {two_nodes} names 2 machines, but the loop runs on one" in message
    single = ROOT / "accelerate_configs" / "single_gpu.yaml"
    message, _ = dry_run_problems(
        quickstart, tmp_path, capsys, "--accelerate_config", str(single), "--num_processes", "2"
    )
    assert "runs one process (distributed_type NO), but num_processes is 2" in message


def test_on_several_machines_it_prints_machine_0s_commands_and_says_each_machine_runs_the_loop(tmp_path, capsys):
    commands = run.run([str(ROOT / "recipes" / "quickstart"), "--dry_run", "--output_dir", str(tmp_path / "out"),
                        "--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "10.0.0.1",
                        "--num_processes", "2"])  # fmt: skip
    printed = capsys.readouterr().out.splitlines()
    assert printed[1] == (
        "[humpback] 2 machines: each runs `humpback run` with these options and its own --machine_rank (0 .. 1); the "
        "commands below are machine 0's, which also runs the one-process stages alone; recipes/launch.slurm does this "
        "on Slurm"
    )
    spanning = [command for command in commands if "--machine_rank" in command]
    assert spanning and all(command[command.index("--machine_rank") + 1] == "0" for command in spanning)


def test_the_command_line_reports_one_line_and_exit_2(quickstart, tmp_path, capsys):
    edit(quickstart / "augment.yaml", temprature=0.7)
    with pytest.raises(SystemExit) as exit_code:
        run_command("run", [str(quickstart), "--dry_run", "--output_dir", str(tmp_path / "out")])
    assert exit_code.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("humpback run: error: dry run: 1 problem(s), the first: augment: ")


def test_a_plumbing_model_is_named_in_one_line_and_its_stages_relax_their_checks(tmp_path, capsys):
    commands = run.run([str(ROOT / "recipes" / "quickstart"), "--dry_run", "--output_dir", str(tmp_path / "out"),
                        "--model", "builtin:tiny-llama", "--preference", "grpo"])  # fmt: skip
    printed = capsys.readouterr().out.splitlines()
    assert [line for line in printed if "plumbing model" in line] == [
        "[humpback] builtin:tiny-llama is a plumbing model (random weights, so the text is noise and the judges are at "
        "chance); the curate stages run with --instruction_checks none and the GRPO stage with --allow_weak_judge true "
        "(its reward marked WEAK), so every stage carries data"
    ]
    relaxed = [command[command.index("-m") + 1] for command in commands if "--instruction_checks" in command]
    assert relaxed == ["humpback_trl.scripts.curate"] * 2
    weak = [command[command.index("-m") + 1] for command in commands if "--allow_weak_judge" in command]
    assert weak == ["humpback_trl.scripts.grpo"]
