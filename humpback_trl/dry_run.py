"""`humpback run FOLDER --dry_run`: check a whole loop before renting GPUs, running nothing and writing nothing.

- every stage's recipe, with the overrides that chain it to the stages before it, through the stage's own parser
  (TrlParser: an unknown key or a bad value fails as it would at launch);
- the accelerate config through accelerate's own loader (unknown keys fail), and that it leaves the machines to
  the loop's own options (num_machines, machine_rank, main_process_ip, main_process_port);
- the inputs the recipes name: local files and folders must exist (or be written by an earlier stage), built-in
  names must be known, Hub ids are checked by their syntax only (offline: nothing is downloaded or looked up);
- then every stage's command, in order.

No model is loaded: the parsers import TRL's config classes, not any weights. The outputs of earlier stages do not
exist yet: each stage parses with empty stand-ins for them in a temporary folder, so that the parsers' own checks
of local paths pass for them and for nothing else. A recipe is checked for the GPUs it is written for, not for the
machine the dry run runs on: transformers' questions about this machine's bf16 and tf32 support are answered yes.
"""

from __future__ import annotations

import importlib
import shlex
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from unittest import mock

from huggingface_hub.utils import HFValidationError, validate_repo_id

from humpback_trl.builtin_models import BUILTIN_PREFIX, builtin_names
from humpback_trl.errors import UserError
from humpback_trl.pipeline import (
    INPUT_KEYS,
    LoopArguments,
    Stage,
    _listed,
    find_accelerate_config,
    plan,
    plumbing_note,
    stage_values,
)

DATA_FOLDER = Path(__file__).resolve().parent / "data"
# Built-in sources that are no file of the package: the corpus stage reads Python's own documentation and the
# standard library's docstrings.
BUILTIN_SOURCES = ("builtin:python-docs", "builtin:python-stdlib")
# Values that switch an input off rather than name one.
NO_INPUT = ("none", "None", "")
FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".yaml", ".txt")
# The hardware checks TrainingArguments runs while it parses (`bf16: true` fails on a machine without a GPU).
HARDWARE_CHECKS = ("is_torch_bf16_gpu_available", "is_torch_tf32_available")


@contextmanager
def on_the_target_gpu() -> Iterator[None]:
    """Parse as on the GPU the recipe is written for: its bf16 / tf32 settings are the recipe's business, checked by
    accelerate and torch when the stage really starts."""
    import transformers.training_args as training_args

    with ExitStack() as stack:
        for name in HARDWARE_CHECKS:
            if hasattr(training_args, name):
                stack.enter_context(mock.patch.object(training_args, name, return_value=True))
        yield


def check_accelerate_config(path: Path, loop: LoopArguments) -> list[str]:
    """The config's problems: accelerate's loader refuses unknown keys and bad values; the machines are the loop's
    options (its stages' launch options), so a config that names several machines would have every stage of a
    one-machine loop wait for machines that never join."""
    from accelerate.commands.config.config_args import load_config_from_file

    try:
        config = load_config_from_file(str(path)).to_dict()
    except (ValueError, TypeError, KeyError) as error:
        return [f"accelerate_config {path}: {error}"]
    machines = int(config.get("num_machines") or 1)
    if machines > 1 and loop.num_machines == 1:
        return [
            f"accelerate_config {path} names {machines} machines, but the loop runs on one; set the loop's "
            f"num_machines {machines}, machine_rank and main_process_ip instead (the loop passes them to every stage) "
            "and num_machines: 1 in the config"
        ]
    if loop.num_processes > 1 and config.get("distributed_type") == "NO":
        return [
            f"accelerate_config {path} runs one process (distributed_type NO), but num_processes is "
            f"{loop.num_processes}; use a config for several (accelerate_configs/multi_gpu.yaml, fsdp_qlora.yaml, "
            "zero3.yaml)"
        ]
    return []


def input_kind(name: str, out: Path) -> tuple[str, str | None]:
    """How a name a recipe gives as input resolves, without the network: (description, problem or None)."""
    if name.startswith(BUILTIN_PREFIX):
        if name in builtin_names():
            return "built-in model", None
        if name in BUILTIN_SOURCES or (DATA_FOLDER / f"{name[len(BUILTIN_PREFIX) :]}.jsonl").is_file():
            return "built-in data", None
        known = [
            *builtin_names(),
            *BUILTIN_SOURCES,
            *(f"{BUILTIN_PREFIX}{p.stem}" for p in DATA_FOLDER.glob("*.jsonl")),
        ]
        return "built-in", f"{name!r} is no built-in name; the built-in names are {sorted(known)}"
    path = Path(name).expanduser()
    if path.exists():
        return f"local {path.resolve()}", None
    if path.resolve().is_relative_to(out.resolve()):
        return "written by an earlier stage", None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return "local", f"no such file or folder {path.resolve()} (a Hub id is NAME or ORG/NAME)"
    if path.suffix in FILE_SUFFIXES:
        return "local", f"no such file {path.resolve()}"
    return "Hub id (not looked up: offline)", None


def stand_in(token: str, out: Path, folder: Path) -> str:
    """`token`, or for a path an earlier stage will write under `out`, an empty file or folder at the same place
    under `folder`."""
    path = Path(token)
    if token.startswith("-") or path.exists() or not path.resolve().is_relative_to(out.resolve()):
        return token
    substitute = folder / path.resolve().relative_to(out.resolve())
    if path.suffix in FILE_SUFFIXES:
        substitute.parent.mkdir(parents=True, exist_ok=True)
        substitute.touch()
    else:
        substitute.mkdir(parents=True, exist_ok=True)
    return str(substitute)


def parse_problem(stage: Stage, out: Path) -> str | None:
    """Why the stage's own parser refuses its recipe and overrides, or None."""
    with tempfile.TemporaryDirectory(prefix="humpback-dry-run-") as folder:
        argv = ["--config", str(stage.recipe), *(stand_in(token, out, Path(folder)) for token in stage.overrides)]
        try:
            with on_the_target_gpu():
                importlib.import_module(stage.module).make_parser().parse_args_and_config(argv)
        except SystemExit:
            # Outside `humpback`, argparse prints its error (an unknown key, a bad value) above and exits.
            return f"{stage.recipe} does not parse with the parser of {stage.module} (its error is printed above)"
        except (ValueError, TypeError, KeyError, OSError) as error:
            return f"{stage.recipe}: {error}".replace(folder, str(out))
    return None


def check_stage(stage: Stage, out: Path) -> tuple[list[str], list[str]]:
    """(what the stage's inputs resolve to, its problems): its recipe through its own parser, then its inputs."""
    if not stage.recipe.is_file():
        return [], [f"the recipe {stage.recipe} does not exist"]
    problem = parse_problem(stage, out)
    if problem:
        return [], [problem]
    values = stage_values(stage)
    resolved, problems = [], []
    for key in sorted(INPUT_KEYS.intersection(values)):
        for name in _listed(values[key]):
            if name in NO_INPUT:
                continue
            kind, problem = input_kind(name, out)
            resolved.append(f"{key}={name} ({kind})")
            if problem:
                problems.append(f"{key}: {problem}")
    return resolved, problems


def dry_run(folder: str | Path, loop: LoopArguments) -> list[list[str]]:
    """Check the loop of `folder` and print every stage's command; returns the commands. Raises UserError naming
    how many problems it found (each is printed beside its stage)."""
    folder = Path(folder)
    accelerate_config = find_accelerate_config(loop.accelerate_config, folder)
    problems = check_accelerate_config(accelerate_config, loop)
    print(f"[humpback] dry run of {folder}: accelerate config {accelerate_config}, {loop.num_processes} process(es)")
    if loop.num_machines > 1:
        print(
            f"[humpback] {loop.num_machines} machines: each runs `humpback run` with these options and its own "
            f"--machine_rank (0 .. {loop.num_machines - 1}); the commands below are machine 0's, which also runs the "
            "one-process stages alone; recipes/launch.slurm does this on Slurm"
        )
        loop = replace(loop, machine_rank=0)
    for problem in problems:
        print(f"  problem: {problem}")
    note = plumbing_note(folder, loop)
    if note:
        print(f"[humpback] {note}")
    out = Path(loop.output_dir)
    commands = []
    for number, stage in enumerate(plan(folder, loop), start=1):
        command = stage.command(loop, accelerate_config)
        commands.append(command)
        resolved, stage_problems = check_stage(stage, out)
        print(f"[humpback] {number}. {stage.name}: {shlex.join(command)}")
        for line in resolved:
            print(f"  input {line}")
        for problem in stage_problems:
            print(f"  problem: {problem}")
        problems += [f"{stage.name}: {problem}" for problem in stage_problems]
    if problems:
        raise UserError(f"dry run: {len(problems)} problem(s), the first: {problems[0]}")
    print(f"[humpback] dry run: {len(commands)} stages parse and their inputs resolve; nothing was run")
    return commands
