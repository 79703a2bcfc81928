"""The second sweep of user errors (issue 22): a mistake found after the arguments parsed, in curate, calibrate,
eval, rewrite and grpo, ends the command with one line naming the file, row, column or option, and exit 2."""

import json

import pytest

from humpback_trl.cli import run_command


def jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def last_line(capfd, command, argv):
    """The error line of a command that must exit 2: the last line of stderr, with no traceback before it."""
    with pytest.raises(SystemExit) as exit_info:
        run_command(command, argv)
    assert exit_info.value.code == 2
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert not any("Traceback" in line for line in lines)
    return lines[-1]


@pytest.fixture()
def pairs_file(tmp_path):
    rows = [{"instruction": f"Say hi {i}.", "output": f"Hi there {i}.", "source_id": f"p{i}"} for i in range(2)]
    return jsonl(tmp_path / "pairs.jsonl", rows)


@pytest.fixture()
def unlabelled_dev(tmp_path):
    return jsonl(tmp_path / "dev.jsonl", [{"instruction": "Say hi.", "output": "Hi."}] * 2)


def test_curate_names_the_dev_set_column_it_lacks(capfd, tmp_path, tiny_model_dir, pairs_file, unlabelled_dev):
    argv = ["--model_name_or_path", str(tiny_model_dir), "--candidates", str(pairs_file), "--output_dir",
            str(tmp_path / "cur"), "--calibration_dev_set", str(unlabelled_dev)]  # fmt: skip
    line = last_line(capfd, "curate", argv)
    assert line == (
        f"humpback curate: error: Dev set {unlabelled_dev}: no column(s) ['label']; "
        "its columns are ['instruction', 'output']"
    )


def test_calibrate_names_the_row_with_a_bad_label(capfd, tmp_path, tiny_model_dir):
    dev = jsonl(tmp_path / "dev.jsonl", [{"instruction": "Say hi.", "output": "Hi.", "label": 1},
                                         {"instruction": "Say hi.", "output": "Bye.", "label": 2}])  # fmt: skip
    argv = ["--scorer", str(tiny_model_dir), "--dev", str(dev), "--output_dir", str(tmp_path / "cal")]
    line = last_line(capfd, "calibrate", argv)
    assert line == f"humpback calibrate: error: Dev set {dev}, row 1: label must be 0 or 1, got 2"


def test_eval_names_the_instruction_column_it_lacks(capfd, tmp_path, tiny_model_dir):
    instructions = jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Say hi."}])
    argv = ["--models", str(tiny_model_dir), str(tiny_model_dir), "--model_names", "a", "b", "--instructions",
            str(instructions), "--output_dir", str(tmp_path / "eval")]  # fmt: skip
    line = last_line(capfd, "eval", argv)
    assert line.startswith(f"humpback eval: error: {instructions}: no column 'instruction'; its columns are ['prompt']")


def test_rewrite_refuses_a_judge_panel(capfd, tmp_path, tiny_model_dir, pairs_file):
    argv = ["--model_name_or_path", str(tiny_model_dir), "--pairs", str(pairs_file), "--output_dir",
            str(tmp_path / "rw"), "--curation_judges", str(tiny_model_dir)]  # fmt: skip
    line = last_line(capfd, "rewrite", argv)
    assert line == (
        "humpback rewrite: error: rewrite scores with one model (model_name_or_path / adapter); "
        "leave curation_judges empty"
    )


def test_grpo_names_an_unknown_reward(capfd, tmp_path, tiny_model_dir, pairs_file):
    argv = ["--model_name_or_path", str(tiny_model_dir), "--prompts", str(pairs_file), "--rewards", "nope",
            "--output_dir", str(tmp_path / "grpo")]  # fmt: skip
    line = last_line(capfd, "grpo", argv)
    assert line.startswith("humpback grpo: error: rewards: ['nope']; choose from ")
