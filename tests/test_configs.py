"""Every command's options are declared once (humpback_trl.configs): one name, type, help and default per option
across commands, with the defaults a command changes listed here; the help reads them without importing torch; an
option renamed in this release is still read under its old name, with a note."""

import dataclasses
import logging
import subprocess
import sys

import pytest

from humpback_trl import configs
from humpback_trl.cli import COMMANDS
from humpback_trl.cli_help import declaring_group

# Names two commands use for different things (each command its own folder, data, counter or model): not one option.
DIFFERENT_OPTIONS = {
    "output_dir",  # each command's own folder and files
    "iteration",  # sft: k of M_k; curate: the iteration it selects for; rewrite: the iteration it rewrites
    "instructions",  # eval: one instruction set (a str); preferences: pair files to answer (a list)
    "num_samples",  # preferences: answers per instruction; magpie: conversations
    "id_column",  # documents (corpus), segments (augment), pairs (sft): each data set's own column and default
    "text_column",  # documents (corpus) or segments (augment)
    "data",  # pairs (sft) or preference rows (dpo, kto)
    "judge",  # eval: one judge model; calibrate: the judges measured (a list)
    "judge_model",  # the loop's curate-stage judge; grpo's reward judge
    "allow_weak_judge",  # the loop's, forwarded to its GRPO stage
    "rewrite_model",  # the loop's, forwarded to the rewrite stages
    "calibration_dev_set",  # curation: optional (none skips); grpo: required, a reward is refused unmeasured
    "curation_mode",  # calibrate: a list of modes, one row each
}
# (command dataclass, option): a default of the command's own, `configs.default_for`.
OWN_DEFAULTS = {
    ("EvalArguments", "greedy"),
    ("AugmentArguments", "max_new_tokens"),
    ("AugmentArguments", "shard_size"),
    ("RewriteArguments", "temperature"),
    ("RewriteArguments", "top_p"),
    ("GRPOArguments", "judge_batch_size"),
    ("GRPOArguments", "rubric_prompt"),
    ("CalibrateArguments", "judge_method"),
}


def command_fields() -> list[tuple[type, dataclasses.Field]]:
    classes = {cls for command in COMMANDS.values() for cls in command.arguments}
    return [(cls, item) for cls in sorted(classes, key=lambda c: c.__name__) for item in dataclasses.fields(cls)]


def default(item: dataclasses.Field):
    return item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default


def test_an_option_is_declared_once_across_commands():
    """Every option name shared by two commands is declared by one group; the exceptions are listed with why."""
    groups: dict[str, set[str]] = {}
    for cls, item in command_fields():
        groups.setdefault(item.name, set()).add(declaring_group(cls, item.name).__name__)
    repeated = {name for name, declared in groups.items() if len(declared) > 1}
    assert repeated == DIFFERENT_OPTIONS - {"curation_mode"}
    # calibrate's curation_mode is a list: it re-declares the option of ScoringArguments.
    assert declaring_group(configs.CalibrationSettings, "curation_mode") is configs.ScoringArguments


def type_name(annotation) -> str:
    """An annotation as written: transformers' HfArgumentParser replaces the string annotations of the fields it
    parses with the types they name (`"int"` -> `int`), and dataclasses share field objects with their bases."""
    if isinstance(annotation, str):
        return annotation
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def test_a_shared_option_has_one_type_help_and_default_but_for_the_listed_overrides():
    seen: dict[str, tuple[str, str]] = {}
    overrides = set()
    for cls, item in command_fields():
        if item.name in DIFFERENT_OPTIONS:
            continue
        group = declaring_group(cls, item.name)
        declared = group.__dataclass_fields__[item.name]
        assert (type_name(item.type), item.metadata["help"]) == (type_name(declared.type), declared.metadata["help"])
        assert seen.setdefault(item.name, (type_name(item.type), item.metadata["help"])) == (
            type_name(item.type),
            item.metadata["help"],
        )
        if default(item) != default(declared):
            overrides.add((cls.__name__, item.name))
    assert overrides == OWN_DEFAULTS
    assert configs.EvalArguments.__dataclass_fields__["greedy"].default is True
    assert configs.RewriteArguments(pairs="p.jsonl").sampling == configs.SamplingConfig(0.0, 1.0, 512, do_sample=False)


def test_help_of_every_command_builds_without_torch():
    script = (
        "import sys\n"
        "from humpback_trl.cli import COMMANDS\n"
        "from humpback_trl.cli_help import render_help\n"
        "texts = [render_help(name, command) for name, command in COMMANDS.items()]\n"
        "assert all('--' in text for text in texts)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"


def test_defaults_agree_with_the_modules_that_use_them():
    """configs defines these values for the options' defaults without importing torch; the modules that import
    torch hold them too until they import them from configs."""
    from humpback_trl import calibration, collators, instruction_checks, judges, likelihood, rewards

    assert configs.BUNDLED_PAIRWISE_DEV == judges.BUNDLED_PAIRWISE_DEV
    assert configs.MIN_JUDGE_ACCURACY == judges.MIN_JUDGE_ACCURACY
    assert (configs.RUBRIC_MARGIN, configs.LIKELIHOOD_MARGIN) == (judges.RUBRIC_MARGIN, judges.LIKELIHOOD_MARGIN)
    assert configs.BUNDLED_DEV_SET == calibration.BUNDLED_DEV_SET
    assert configs.DEFAULT_BACKWARD_PROMPT == collators.DEFAULT_BACKWARD_PROMPT
    assert configs.INSTRUCTION_CHECKS == instruction_checks.CHECKS
    assert configs.DEFAULT_INSTRUCTION_CHECKS == instruction_checks.DEFAULT_CHECKS
    assert configs.LIKELIHOOD_WEIGHTS == dataclasses.asdict(likelihood.LikelihoodWeights())
    assert configs.LENGTH_WINDOW == rewards.LENGTH_WINDOW


@pytest.mark.parametrize("where", ["command line", "recipe"])
def test_a_renamed_option_is_read_under_its_old_name_with_a_note(where, tmp_path, caplog):
    from humpback_trl.scripts import preferences

    old = ["--scoring_mode", "generate", "--scoring_prompt=score-only", "--scoring_batch_size", "3"]
    argv = ["--adapter", "org/m2", "--instructions", "scored.jsonl"]
    if where == "recipe":
        recipe = tmp_path / "preferences.yaml"
        recipe.write_text("scoring_mode: generate\nscoring_prompt: score-only\nscoring_batch_size: 3\n")
        argv += ["--config", str(recipe)]
    else:
        argv += old
    with caplog.at_level(logging.WARNING, logger="humpback_trl.scripts.parsing"):
        args, _ = preferences.make_parser().parse_args_and_config(argv)
    assert (args.curation_mode, args.curation_prompt, args.curation_batch_size) == ("generate", "score-only", 3)
    assert args.a5_threshold == 5.0  # the generate mode's default, resolved from the renamed option
    assert [record.getMessage() for record in caplog.records] == [
        f"scoring_{name} is deprecated: it is now curation_{name} (the old name is read until the next release)"
        for name in ("mode", "prompt", "batch_size")
    ]
