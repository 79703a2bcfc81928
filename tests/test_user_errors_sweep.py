"""Each family of mistakes the package reports to its users on purpose (issue 22, item 5) ends the command line with
one line naming the file, row, key or option, and exit 2: corpus settings and files, collators, chat templates,
model paths, resumable shards, engines, the oasst seed, optional packages and the loop's own arguments."""

import importlib.util
import json

import pytest
import yaml

from humpback_trl import cli
from humpback_trl.cli import run_command
from humpback_trl.collators import SwappedFieldCollator
from humpback_trl.errors import MissingColumnError, MissingFileError, MissingPackageError
from humpback_trl.filters import wrong_language
from humpback_trl.paths import check_local
from humpback_trl.scripts import demo

# The corpus stage's progress bar, drawn before the first document is read; the only other line it prints.
CORPUS_BAR = "Preparing corpus:"


def jsonl(path, rows, last=None):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + (last + "\n" if last else ""), encoding="utf-8")
    return path


def stderr_after_failing(capfd, command, argv):
    """stderr (the file descriptor, so a library's own log handler is seen too) of a command that must exit 2."""
    with pytest.raises(SystemExit) as exit_info:
        run_command(command, argv)
    assert exit_info.value.code == 2
    return capfd.readouterr().err


def error_lines(capfd, command, argv):
    """The lines of stderr, less the corpus progress bar (tqdm redraws it with carriage returns)."""
    err = stderr_after_failing(capfd, command, argv)
    return [line for line in err.splitlines() if line.strip() and not line.startswith(CORPUS_BAR)]


def last_line_alone(capfd, command, argv):
    """For a command that logs its progress before it fails: the error line, which must be the last line and the
    only one that speaks of an error or shows a traceback."""
    lines = stderr_after_failing(capfd, command, argv).splitlines()
    assert not any("Traceback" in line for line in lines)
    assert [line for line in lines if "error" in line.lower()] == lines[-1:]
    return lines[-1]


@pytest.fixture()
def pairs_file(tmp_path):
    return jsonl(tmp_path / "pairs.jsonl", [{"instruction": "Say hi.", "output": "Hi there."}] * 2)


def sft_argv(tiny_model_dir, tmp_path, *extra):
    return ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "out"), "--use_cpu", "true",
            "--report_to", "none", *extra]  # fmt: skip


def test_a_corpus_recipe_with_an_unknown_or_impossible_filter_value(tmp_path, capfd):
    recipe = tmp_path / "corpus.yaml"
    recipe.write_text(yaml.safe_dump({"source": "builtin:python-docs", "doc_format": "pdf"}), encoding="utf-8")
    assert error_lines(capfd, "corpus", ["--config", str(recipe)]) == [
        "humpback corpus: error: doc_format must be one of ('text', 'markdown', 'html', 'auto'), got 'pdf'"
    ]
    argv = ["--source", "builtin:python-docs", "--min_chars", "500", "--max_chars", "400"]
    assert error_lines(capfd, "corpus", argv) == [
        "humpback corpus: error: min_chars (500) is larger than max_chars (400)"
    ]


def test_a_malformed_corpus_json_lines_file_names_its_line_and_nothing_else(tmp_path, capfd, caplog):
    corpus = jsonl(tmp_path / "docs.jsonl", [{"text": "A document."}] * 2, last='{"text": "cut o')
    argv = ["--source", str(corpus), "--output_dir", str(tmp_path / "out")]
    assert error_lines(capfd, "corpus", argv) == [
        f"humpback corpus: error: {corpus}: line 3, column 10: not valid JSON (Unterminated string starting at)"
    ]
    # datasets' own log of the reader's failure would say it a second time, on the terminal only (its handler holds
    # the stderr it was imported with, so it is read here from the records).
    assert [record.getMessage() for record in caplog.records if record.name.startswith("datasets")] == []


def test_a_corpus_without_its_text_column_or_with_nothing_kept_names_the_option(tmp_path, capfd):
    corpus = jsonl(tmp_path / "docs.jsonl", [{"body": "A document."}])
    argv = ["--source", str(corpus), "--output_dir", str(tmp_path / "out")]
    assert error_lines(capfd, "corpus", argv) == [
        "humpback corpus: error: column 'text' not found in docs.jsonl; available columns: ['body'] (set text_column)"
    ]
    short = jsonl(tmp_path / "short.jsonl", [{"text": "Too short to keep."}])
    argv = ["--source", str(short), "--output_dir", str(tmp_path / "out")]
    lines = error_lines(capfd, "corpus", argv)
    # The counts are printed on stdout; stderr holds the one error line.
    assert len(lines) == 1
    assert lines[0].startswith(
        f"humpback corpus: error: corpus: 0 of 1 segments kept from {short}; removed_too_short removed the most (1): "
        "lower min_chars."
    )


def test_a_missing_local_model_path_names_its_option(tmp_path, capfd):
    nowhere = tmp_path / "no-such-model"
    assert error_lines(capfd, "augment", ["--corpus", "x.jsonl", "--model_name_or_path", str(nowhere)]) == [
        f"humpback augment: error: model_name_or_path: no such folder {nowhere} (a Hub model is named ORG/NAME)"
    ]
    with pytest.raises(MissingFileError, match=f"^adapter: no such folder {nowhere} "):
        check_local(str(nowhere), "adapter")


def test_a_backward_prompt_without_its_placeholder_is_refused(tiny_model_dir, pairs_file, tmp_path, capfd):
    argv = sft_argv(tiny_model_dir, tmp_path, "--data", str(pairs_file), "--backward_prompt", "Write the question.")
    assert last_line_alone(capfd, "sft", argv) == (
        "humpback sft: error: backward_prompt must contain the placeholder {output}"
    )


def test_a_collator_given_rows_without_a_pair_column_names_the_row_and_column(tiny_tokenizer):
    collator = SwappedFieldCollator(tiny_tokenizer, direction="forward")
    row = {"source_id": "doc-7", "prompt": "Say hi.", "output": "Hi there."}
    with pytest.raises(MissingColumnError) as raised:
        collator([row])
    assert cli.error_line(raised.value) == (
        "Row doc-7 has no instruction column (its columns: ['source_id', 'prompt', 'output']); the collator reads "
        "raw pair rows: rename the columns to instruction and output"
    )


def test_a_chat_template_name_for_a_single_template_tokenizer_is_refused(tiny_model_dir, pairs_file, tmp_path, capfd):
    argv = sft_argv(tiny_model_dir, tmp_path, "--data", str(pairs_file), "--chat_template_name", "tool_use")
    assert last_line_alone(capfd, "sft", argv) == (
        f"humpback sft: error: chat_template_name='tool_use', but the tokenizer of {str(tiny_model_dir)!r} holds a "
        "single template."
    )


def test_an_oasst_export_without_its_fields_names_the_row(tiny_model_dir, tmp_path, capfd):
    export = jsonl(tmp_path / "export.jsonl", [{"message_id": "m1", "text": "Hello"}])
    argv = sft_argv(tiny_model_dir, tmp_path, "--oasst_seed", str(export))
    assert last_line_alone(capfd, "sft", argv) == (
        "humpback sft: error: oasst message row 0 lacks field(s) ['parent_id', 'role', 'lang', 'rank', 'deleted']; "
        "is this the oasst1 message export?"
    )


def test_duplicate_segment_ids_are_refused_before_any_shard_is_worked(tiny_model_dir, tmp_path, capfd):
    corpus = jsonl(
        tmp_path / "segments.jsonl", [{"segment_id": "a", "text": "One."}, {"segment_id": "a", "text": "Two."}]
    )
    argv = ["--corpus", str(corpus), "--model_name_or_path", str(tiny_model_dir), "--engine", "transformers",
            "--output_dir", str(tmp_path / "augment")]  # fmt: skip
    assert last_line_alone(capfd, "augment", argv) == (
        "humpback augment: error: 1 duplicate 'source_id' value(s) in the items: 'a' (rows 0 and 1). "
        "Keys must be unique."
    )
    assert not (tmp_path / "augment" / "shards").exists()


def test_an_unknown_engine_names_the_choices(capfd):
    assert error_lines(capfd, "augment", ["--corpus", "x.jsonl", "--engine", "tgi"]) == [
        "humpback augment: error: engine must be one of ('auto', 'transformers', 'vllm'), got 'tgi'"
    ]


@pytest.mark.skipif(importlib.util.find_spec("langdetect") is not None, reason="langdetect is installed")
def test_a_language_filter_without_its_package_names_the_install():
    with pytest.raises(MissingPackageError, match=r"^language='fr' needs langdetect: pip install langdetect"):
        wrong_language("fr")


def test_the_loop_without_a_recipe_folder_and_the_demo_without_its_recipes(tmp_path, monkeypatch, capfd):
    [line] = error_lines(capfd, "run", ["--output_dir", str(tmp_path)])
    assert line.startswith("humpback run: error: name a recipe folder or its loop.yaml first: humpback run RECIPE")
    monkeypatch.setattr(demo, "QUICKSTART", tmp_path / "recipes" / "quickstart")
    assert error_lines(capfd, "demo", ["--output_dir", str(tmp_path / "demo")]) == [
        f"humpback demo: error: The demo runs the recipes in {tmp_path / 'recipes' / 'quickstart'}, which this "
        "installation lacks: run it from a clone."
    ]
