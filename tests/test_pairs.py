"""Loading pair data: schema, column mapping, clear errors and counted rejections."""

import json

import pandas as pd
import pytest

from humpback_trl.pairs import CURATION_FIELDS, PairColumns, builtin_path, load_pairs


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


ROWS = [
    {"prompt": "Name a prime number.", "answer": "Seven is prime.", "uid": "a"},
    {"prompt": "   ", "answer": "An answer to nothing.", "uid": "b"},
    {"prompt": "Say hello.", "answer": "", "uid": "c"},
    {"prompt": "Define entropy.", "answer": "A measure of disorder.", "uid": "d"},
    {"prompt": "Blank both.", "answer": " \n\t", "uid": "e"},
]
COLUMNS = PairColumns(instruction="prompt", output="answer", source_id="uid")


def test_custom_columns_and_counted_rejections(tmp_path):
    pairs, report = load_pairs(write_jsonl(tmp_path / "p.jsonl", ROWS), COLUMNS, default_source="augmented")
    assert pairs["source_id"] == ["a", "d"]
    assert pairs["instruction"] == ["Name a prime number.", "Define entropy."]
    assert set(pairs["source"]) == {"augmented"}
    assert all(pairs[field] == [None, None] for field in CURATION_FIELDS)
    assert (report.rows, report.kept, report.rejected) == (5, 2, 3)
    assert (report.empty_instruction, report.empty_output) == (1, 2)


def test_missing_column_names_column_and_file(tmp_path):
    path = write_jsonl(tmp_path / "wrong.jsonl", ROWS)
    with pytest.raises(KeyError, match=r"wrong\.jsonl.*output column 'output'.*\['prompt', 'answer', 'uid'\]"):
        load_pairs(path, PairColumns(instruction="prompt"))
    # The advice names an option only where the command has it: humpback sft, not curate or preferences.
    with pytest.raises(KeyError, match=r"Set `output_column` to the right name\."):
        load_pairs(path, PairColumns(instruction="prompt", settable=True))
    with pytest.raises(KeyError, match=r"rename it in the file \(only `humpback sft` reads other names"):
        load_pairs(path)


def test_source_column_is_respected_and_validated(tmp_path):
    rows = [
        {"instruction": "q", "output": "a", "source": "magpie"},
        {"instruction": "q2", "output": "a2", "source": "web"},
    ]
    path = write_jsonl(tmp_path / "s.jsonl", rows[:1])
    pairs, _ = load_pairs(path)
    assert pairs["source"] == ["magpie"] and pairs["source_id"] == [f"{path}:0"]
    with pytest.raises(ValueError, match=r"row 1: source 'web'"):
        load_pairs(write_jsonl(tmp_path / "bad.jsonl", rows))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_csv_and_parquet(tmp_path, suffix):
    frame = pd.DataFrame(ROWS)
    path = tmp_path / f"pairs{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    pairs, report = load_pairs(str(path), COLUMNS)
    assert pairs["source_id"] == ["a", "d"] and report.rejected == 3


def test_missing_local_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_pairs(str(tmp_path / "nope.jsonl"))


def test_bundled_seed_is_clean():
    pairs, report = load_pairs("builtin:seed", PairColumns(source_id="id"))
    assert report.rejected == 0 and len(pairs) >= 150
    assert len(set(pairs["instruction"])) == len(pairs)
    assert builtin_path("seed").name == "seed.jsonl"
