"""User errors are one line naming what to fix, exit 2; anything else is a bug with its traceback (issue 22, item 5):
a malformed data file names the file and the line for every loader, a mistyped value points at --help instead of
printing the whole usage, and only `UserError` or the parser's own errors count as the user's."""

import json

import pytest
import yaml

from humpback_trl import cli
from humpback_trl.calibration import load_dev_set
from humpback_trl.cli import run_command
from humpback_trl.errors import MissingFileError, UserError
from humpback_trl.pairs import load_pairs
from humpback_trl.preference_training import load_preference_data
from humpback_trl.scripts import demo

CUT_OFF = '{"instruction": "c", "outp'


def jsonl(path, rows, last=None):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + (last + "\n" if last else ""))
    return path


def error_lines(capsys, command, argv):
    with pytest.raises(SystemExit) as exit_info:
        run_command(command, argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.splitlines()


@pytest.fixture()
def cut_off_pairs(tmp_path):
    """A JSON-lines file whose third line is cut off, as a killed writer leaves it."""
    return jsonl(tmp_path / "pairs.jsonl", [{"instruction": "a", "output": "b"}] * 2, last=CUT_OFF)


def test_a_malformed_pair_file_ends_sft_with_one_line_naming_the_file_and_line(
    cut_off_pairs, tmp_path, tiny_model_dir, capsys
):
    argv = ["--model_name_or_path", str(tiny_model_dir), "--data", str(cut_off_pairs), "--output_dir",
            str(tmp_path / "out"), "--use_cpu", "true", "--report_to", "none"]  # fmt: skip
    assert error_lines(capsys, "sft", argv) == [
        f"humpback sft: error: {cut_off_pairs}: line 3, column 22: not valid JSON (Unterminated string starting at)"
    ]


@pytest.mark.parametrize(
    ("load", "rows"),
    [
        (lambda path: load_pairs(str(path)), [{"instruction": "a", "output": "b"}]),
        (lambda path: load_dev_set(str(path)), [{"instruction": "a", "output": "b", "label": 1}]),
        (lambda path: load_preference_data([str(path)], "kto"), [{"prompt": "a", "completion": "b", "label": True}]),
    ],
    ids=["pairs", "dev set", "preference data"],
)
def test_every_loader_names_the_file_and_line(tmp_path, load, rows):
    path = jsonl(tmp_path / "data.jsonl", rows * 3, last=CUT_OFF)
    with pytest.raises(UserError, match=rf"^{path}: line 4, column 22: not valid JSON \(Unterminated string"):
        load(path)


def test_a_json_document_names_its_line_and_a_csv_its_row(tmp_path):
    document = tmp_path / "pairs.json"
    document.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]\n')
    with pytest.raises(UserError, match=rf"^{document}: line 3, column 23: not valid JSON \(Expecting ','"):
        load_pairs(str(document))
    table = tmp_path / "pairs.csv"
    table.write_text('instruction,output\na,b\n"c,d\n')
    with pytest.raises(UserError, match=rf"^{table}: not a readable csv file \(.*row 2"):
        load_pairs(str(table))
    with pytest.raises(MissingFileError, match="nowhere.jsonl does not exist"):
        load_pairs(str(tmp_path / "nowhere.jsonl"))


def test_a_mistyped_value_is_its_error_and_a_pointer_to_help(capsys):
    lines = error_lines(capsys, "sft", ["--learning_rate", "abc"])
    assert lines == [
        "humpback sft: error: argument --learning_rate/--learning-rate: invalid float value: 'abc' "
        "(see `humpback sft --help`)"
    ]
    assert error_lines(capsys, "demo", ["--iterations", "two"]) == [
        "humpback demo: error: argument --iterations: invalid int value: 'two' (see `humpback demo --help`)"
    ]


def test_an_unknown_recipe_key_is_the_parser_s_error_in_one_line(tmp_path, capsys):
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text(yaml.safe_dump({"data": ["x.jsonl"], "use_cpu": True, "bf16": False, "learning_rat": 1e-6}))
    [line] = error_lines(capsys, "dpo", ["--config", str(recipe)])
    assert line.startswith("humpback dpo: error: Unknown arguments from config file: ['--learning_rat'")


def test_a_bug_keeps_its_traceback(monkeypatch):
    """A KeyError or ValueError the package did not raise for the user is a bug: it propagates (exit 1)."""

    def buggy(argv):
        return {}["missing"]

    monkeypatch.setattr(demo, "run", buggy)
    with pytest.raises(KeyError, match="missing"):
        run_command("demo", [])
    monkeypatch.setattr(demo, "run", lambda argv: int("not a number"))
    with pytest.raises(ValueError, match="invalid literal"):
        run_command("demo", [])


def test_only_user_errors_and_the_parser_s_own_are_the_user_s():
    assert cli.is_user_error(UserError("x")) and cli.is_user_error(MissingFileError("y"))
    assert not cli.is_user_error(ValueError("z")) and not cli.is_user_error(KeyError("k"))


def test_the_demo_takes_output_dir_as_every_command_and_its_old_spelling():
    for flag in ("--output_dir", "--output-dir"):
        assert demo.argument_parser().parse_args([flag, "runs/demo"]).output_dir == "runs/demo"
