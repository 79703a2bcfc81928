"""The `humpback` console script: one subcommand per command module in `humpback_trl.scripts`.

Subcommands run in this process; for several processes use `accelerate launch -m humpback_trl.scripts.<command>`,
whose `__main__` goes through `run_command` too, so errors read the same either way.

- `humpback --help` and `humpback <command> --help` print without importing torch (the options are declared in
  the torch-free `humpback_trl.configs`); `--help-all` prints the full argparse help, trainer options included.
- A user error prints one line naming it and exits 2: a `UserError` (humpback_trl/errors.py: a missing file, column
  or model, a malformed data file), an error the parser raised while reading the recipe and the command line (an
  unknown key, a value of the wrong type: argparse's whole usage is replaced by a pointer to --help), or a missing
  local model found before the command loads. Anything else is a bug and keeps its traceback (exit 1);
  HUMPBACK_DEBUG=1 shows the traceback of a user error too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from humpback_trl import configs
from humpback_trl.cli_help import Command, Option, render_help
from humpback_trl.errors import UserError
from humpback_trl.paths import MODEL_OPTIONS, check_local

COMMANDS: dict[str, Command] = {
    "sft": Command(
        "humpback_trl.scripts.sft",
        "Train a forward or backward model on pair data with TRL's SFTTrainer (QLoRA in the recipes).",
        (configs.HumpbackSFTArguments,),
        ("trl SFTConfig", "trl ModelConfig"),
    ),
    "corpus": Command(
        "humpback_trl.scripts.corpus",
        "Split unlabeled documents into filtered, deduplicated segments.",
        (configs.CorpusConfig, configs.CorpusOutputArguments),
    ),
    "augment": Command(
        "humpback_trl.scripts.augment",
        "The backward model writes an instruction for every segment (self-augmentation).",
        (configs.AugmentArguments, configs.InferenceModelArguments),
    ),
    "curate": Command(
        "humpback_trl.scripts.curate",
        "A forward model scores candidate pairs with the rubric and selects A4 / A5 (self-curation).",
        (configs.CurateArguments, configs.InferenceModelArguments, configs.CurationSettings),
    ),
    "magpie": Command(
        "humpback_trl.scripts.magpie",
        "An aligned chat model writes instructions and answers from its pre-query template (MAGPIE).",
        (configs.MagpieArguments, configs.InferenceModelArguments, configs.CurationSettings),
    ),
    "rewrite": Command(
        "humpback_trl.scripts.rewrite",
        "An aligned model rewrites curated outputs as answers grounded in their source, checked for faithfulness.",
        (configs.RewriteArguments, configs.InferenceModelArguments, configs.CurationSettings),
    ),
    "run": Command(
        "humpback_trl.scripts.run",
        "The whole loop from a recipe folder (its loop.yaml and one recipe per stage).",
        (configs.LoopArguments,),
        usage="RECIPE_FOLDER|LOOP.yaml [--from STAGE] [--key value ...]",
        epilog="Stages, in order: corpus -> myx (backward model) -> augment -> [magpie] -> m0 -> curate-1 (M0 scores "
        "the pool) -> m1 -> ... -> curate-K -> mK [-> preferences -> mK-dpo | mK-kto] [-> eval]. A rerun skips "
        "finished stages and resumes an interrupted one; --from STAGE restarts that stage and every stage that "
        "depends on it.",
    ),
    "demo": Command(
        "humpback_trl.scripts.demo",
        "The whole loop on CPU on SmolLM2-135M-Instruct with bundled data (no Hub).",
        usage="[--output_dir DIR] [--iterations K] [--magpie none|candidates|seed] [--model NAME] [--from STAGE]",
        options=(
            Option("output_dir", "DIR", "outputs/demo", "Where every stage and the report go (also --output-dir)."),
            Option("iterations", "int", "2", "Forward iterations K; the paper's Humpback is M2."),
            Option(
                "magpie",
                "none|candidates|seed",
                "none",
                "none | candidates (MAGPIE pairs join the pool and are curated) | seed (added to the seed).",
            ),
            Option(
                "model",
                "str",
                "None",
                "Model of every stage instead of the recipes' builtin:smollm2-135m-instruct, e.g. builtin:tiny-llama.",
            ),
            Option("from", "STAGE", "None", "Force a restart from this stage."),
        ),
    ),
    "eval": Command(
        "humpback_trl.scripts.eval",
        "Models answer an instruction set; a local judge compares their answers in both orders.",
        (configs.EvalArguments,),
    ),
    "calibrate": Command(
        "humpback_trl.scripts.calibrate",
        "A scorer's ROC AUC and A4/A5 precision/recall on a labelled dev set.",
        (configs.CalibrateArguments, configs.CalibrationSettings),
    ),
    "preferences": Command(
        "humpback_trl.scripts.preferences",
        "Preference data from rubric scores: self-rewarding DPO pairs from M_k, or KTO rows from a scored pool.",
        (configs.PreferenceArguments, configs.InferenceModelArguments),
    ),
    "dpo": Command(
        "humpback_trl.scripts.dpo",
        "Train an SFT adapter (M_k) further with TRL's DPOTrainer on preference pairs.",
        (configs.PreferenceTrainingArguments,),
        ("trl DPOConfig", "trl ModelConfig"),
    ),
    "kto": Command(
        "humpback_trl.scripts.kto",
        "Train an SFT adapter (M_k) further with TRL's KTOTrainer on desirable/undesirable rows.",
        (configs.PreferenceTrainingArguments,),
        ("trl KTOConfig", "trl ModelConfig"),
    ),
    "grpo": Command(
        "humpback_trl.scripts.grpo",
        "Train an SFT adapter (M_k) further online with TRL's GRPOTrainer, a calibrated fixed judge as reward.",
        (configs.GRPOArguments,),
        ("trl GRPOConfig", "trl ModelConfig"),
    ),
    "chat": Command(
        "humpback_trl.scripts.chat",
        "Answer prompts with a published (or local) Humpback adapter.",
        (configs.ChatArguments, configs.InferenceModelArguments),
        usage="--adapter DIR_OR_REPO --prompt TEXT [TEXT ...] [--key value ...]",
    ),
}

# What the parser raises about a recipe or the command line (its own errors and the dataclasses' checks, which it
# runs): a bad value, an unknown key, a missing local path.
PARSE_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)
DEBUG_ENV = "HUMPBACK_DEBUG"


class UsageError(UserError):
    """argparse's own error (an unknown option, a value of the wrong type), raised instead of printing the usage."""


def usage() -> str:
    lines = ["usage: humpback <command> [--config recipe.yaml] [--key value ...]", "", "commands:"]
    lines += [f"  {name:<10} {command.summary}" for name, command in COMMANDS.items()]
    lines += ["", "`humpback <command> --help` lists a command's options; HUMPBACK_DEBUG=1 shows tracebacks."]
    return "\n".join(lines)


def raised_while_parsing(error: BaseException) -> bool:
    """Whether `error` was raised inside an argument parser (TrlParser, argparse), by its own checks or by the
    dataclasses it builds: then it is about the recipe or the command line, whatever its type."""
    frame = error.__traceback__
    while frame is not None:
        if isinstance(frame.tb_frame.f_locals.get("self"), argparse.ArgumentParser):
            return True
        frame = frame.tb_next
    return False


def is_user_error(error: BaseException) -> bool:
    return isinstance(error, UserError) or (isinstance(error, PARSE_ERRORS) and raised_while_parsing(error))


@contextmanager
def usage_errors_raised() -> Iterator[None]:
    """argparse prints the whole usage (hundreds of trainer options) before its one-line error; within the block
    its error is raised instead, to be printed as one line with a pointer to --help."""

    def error(parser: argparse.ArgumentParser, message: str) -> None:
        raise UsageError(message)

    original = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


def error_line(error: BaseException) -> str:
    # KeyError's str() is the repr of its key; its message is the first argument.
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    lines = [line for line in str(message).splitlines() if line.strip()] or [type(error).__name__]
    more = " (HUMPBACK_DEBUG=1 shows the rest)" if len(lines) > 1 else ""
    return f"{lines[0].strip()}{more}"


def command_line_options(argv: Sequence[str]) -> dict[str, str]:
    """`--key value` and `--key=value` on the command line, as {key: first value} (dashes read as underscores)."""
    options: dict[str, str] = {}
    for index, token in enumerate(argv):
        if token.startswith("--"):
            name, equals, value = token[2:].partition("=")
            following = argv[index + 1] if index + 1 < len(argv) else ""
            options[name.replace("-", "_")] = value if equals else following
    return options


def argv_recipe(argv: Sequence[str]) -> dict[str, Any]:
    """The mapping of the `--config` recipe a command line names ({} without one, or when it is not a file)."""
    path = Path(command_line_options(argv).get("config", ""))
    recipe = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    return recipe if isinstance(recipe, dict) else {}


def model_paths(argv: Sequence[str]) -> dict[str, str]:
    """Every model or adapter option the command will see: its `--config` recipe's, then the command line's on top."""
    given = {**argv_recipe(argv), **command_line_options(argv)}
    return {key: given[key] for key in MODEL_OPTIONS if isinstance(given.get(key), str)}


def check_model_paths(argv: list[str]) -> None:
    """Fail on a missing local model before importing the command: torch and TRL alone take seconds to load."""
    for option, value in model_paths(argv).items():
        check_local(value, option)


def run_command(name: str, argv: list[str] | None = None) -> None:
    """Help, then the command's `run(argv)`; user errors become one line on stderr and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = COMMANDS[name]
    if "-h" in argv or "--help" in argv:
        print(render_help(name, command), end="")
        return
    if "--help-all" in argv:
        argv = [arg if arg != "--help-all" else "--help" for arg in argv]
    # argparse names the program after argv[0]: usage lines then say `humpback sft`, not `humpback`.
    sys.argv[0] = f"humpback {name}"
    try:
        check_model_paths(argv)
        with usage_errors_raised():
            importlib.import_module(command.module).run(argv)
        end_process_group()
    except Exception as error:
        if not is_user_error(error) or os.environ.get(DEBUG_ENV) == "1":
            raise
        hint = f" (see `humpback {name} --help`)" if isinstance(error, UsageError) else ""
        print(f"humpback {name}: error: {error_line(error)}{hint}", file=sys.stderr)
        sys.exit(2)


def end_process_group() -> None:
    """Destroy the process group a finished command started (accelerate starts one under `accelerate launch` and never
    ends it): left to the interpreter's exit, gloo's threads can abort the process (SIGABRT, "terminate called
    without an active exception") after the work is done, and the launcher then reports the whole run failed."""
    distributed = sys.modules.get("torch.distributed")  # not imported: no group to end, and torch stays unimported
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] not in COMMANDS:
        print(f"humpback: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    run_command(argv[0], argv[1:])


if __name__ == "__main__":
    main()
