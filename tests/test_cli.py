"""The command line: fast help that matches the real parsers, one-line user errors, stage processes that die with
their parent."""

import dataclasses
import importlib
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from humpback_trl import cli
from humpback_trl.cli import COMMANDS, error_line
from humpback_trl.cli_help import dataclass_options


def humpback(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-X", "importtime", "-m", "humpback_trl.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)


def test_top_level_help_lists_every_command_without_importing_torch():
    result = humpback("--help")
    assert result.returncode == 0
    assert all(f"  {name} " in result.stdout for name in COMMANDS)
    imported = [line for line in result.stderr.splitlines() if line.rstrip().endswith((" torch", " transformers"))]
    assert imported == []


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_help_names_the_command_and_documents_our_options_fast(name):
    start = time.perf_counter()
    result = humpback(name, "--help")
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"usage: humpback {name} ")
    options = [line.split()[0] for line in lines if line.startswith("  --")]
    assert (options[0] == "--config") == bool(COMMANDS[name].arguments)  # the demo reads no recipe
    for cls in COMMANDS[name].arguments:
        names = [option.name for option in dataclass_options(cls)]
        assert [f"--{name}" for name in names] == [o for o in options if o[2:] in set(names)]
    assert not any(line.rstrip().endswith(" torch") for line in result.stderr.splitlines())
    assert elapsed < 10  # a few tenths of a second idle; generous for a loaded CI machine


@pytest.mark.parametrize("name", sorted(name for name, command in COMMANDS.items() if command.arguments))
def test_help_lists_exactly_the_fields_of_the_real_parser(name):
    """The help lists the dataclasses the command's TrlParser really parses, every field of each once."""
    command = COMMANDS[name]
    module = importlib.import_module(command.module)
    parser = module.make_parser()
    ours = [t for t in parser.dataclass_types if t.__module__.startswith("humpback_trl")]
    assert ours == list(command.arguments)
    for cls in ours:
        listed = [o.name for o in dataclass_options(cls)]
        assert sorted(listed) == sorted(f.name for f in dataclasses.fields(cls))


def test_demo_help_lists_exactly_the_options_its_parser_takes():
    """The demo parses with argparse (no dataclasses): its fast help must still show what it accepts."""
    from humpback_trl.scripts import demo

    assert [name for name, command in COMMANDS.items() if not command.arguments] == ["demo"]
    parser = demo.argument_parser()
    expected = [action.option_strings[0] for action in parser._actions if action.option_strings][1:]  # not -h
    result = humpback("demo", "--help")
    assert result.returncode == 0
    assert [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  --")] == expected


def test_a_user_error_is_one_line_and_exit_code_2(tmp_path, tiny_model_dir):
    missing = tmp_path / "missing.jsonl"
    result = humpback("sft", "--model_name_or_path", str(tiny_model_dir), "--data", str(missing), "--use_cpu", "true")
    assert result.returncode == 2
    # Only the error line names the command; a progress bar may stand before it, no traceback does.
    errors = [line for line in result.stderr.splitlines() if line.startswith("humpback")]
    assert "Traceback" not in result.stderr
    assert errors == [f"humpback sft: error: Data file {missing} does not exist"]
    debug = humpback("sft", "--model_name_or_path", str(tiny_model_dir), "--data", str(missing), "--use_cpu", "true",
                     env={"HUMPBACK_DEBUG": "1"})  # fmt: skip
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_error_line_keeps_the_first_line_and_the_message_of_a_key_error():
    assert error_line(KeyError("no column 'text'")) == "no column 'text'"
    assert error_line(ValueError("first\nsecond")) == "first (HUMPBACK_DEBUG=1 shows the rest)"


def test_a_stage_process_dies_with_its_parent_even_on_kill_9():
    """The loop starts stages through run_stage_process; their children inherit the parent-death signal."""
    script = (
        "import subprocess, sys; from humpback_trl.process import run_stage_process; "
        "run_stage_process([sys.executable, '-c', "
        '\'import humpback_trl, subprocess, sys; subprocess.run([sys.executable, "-c", '
        '"import humpback_trl, time; time.sleep(120)"])\'])'
    )
    parent = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(psutil.Process(parent.pid).children(recursive=True)) < 2:
        time.sleep(0.2)
    descendants = psutil.Process(parent.pid).children(recursive=True)
    assert len(descendants) == 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    gone, alive = psutil.wait_procs(descendants, timeout=20)
    assert alive == []


@pytest.mark.parametrize(
    ("args", "option", "path"),
    [
        (["chat", "--adapter", "./nowhere/m2", "--prompt", "hi"], "adapter", "nowhere/m2"),
        (["curate", "--candidates", "c.jsonl", "--adapter", "/nowhere/m0"], "adapter", "/nowhere/m0"),
        (["dpo", "--sft_adapter", "runs/x/m2"], "sft_adapter", "runs/x/m2"),
    ],
)
def test_a_missing_local_model_fails_before_torch_loads(args, option, path):
    start = time.perf_counter()
    result = humpback(*args)
    assert time.perf_counter() - start < 5
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"humpback {args[0]}: error: {option}: no such folder {path} (a Hub model is named ORG/NAME)"
    )
    assert not any(line.rstrip().endswith(" torch") for line in result.stderr.splitlines())


def test_the_recipe_s_model_is_checked_unless_the_command_line_replaces_it(tmp_path):
    recipe = tmp_path / "seed.yaml"
    recipe.write_text("model_name_or_path: ~/no/such/model\ndata: [builtin:seed]\n")
    result = humpback("sft", "--config", str(recipe))
    assert result.returncode == 2 and "model_name_or_path: no such folder" in result.stderr.splitlines()[-1]
    assert cli.model_paths(["--config", str(recipe), "--model_name_or_path", "org/name"]) == {
        "model_name_or_path": "org/name"
    }


def test_every_option_of_our_dataclasses_has_a_description():
    undescribed = {
        f"{cls.__name__}.{option.name}"
        for command in COMMANDS.values()
        for cls in command.arguments
        for option in dataclass_options(cls)
        if not option.help
    }
    assert undescribed == set()


def test_a_finished_command_ends_the_process_group_it_ran_in(tmp_path, monkeypatch):
    # Left to the interpreter's exit, a gloo group can abort a finished rank (SIGABRT after the work was done).
    import torch.distributed as dist

    (tmp_path / "finished_command.py").write_text("def run(argv):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(COMMANDS, "finished", dataclasses.replace(COMMANDS["corpus"], module="finished_command"))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        cli.run_command("finished", [])
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
