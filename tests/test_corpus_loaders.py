"""Local table files go through datasets' own loaders (JSON lines, JSON arrays, CSV, Parquet), and invalid UTF-8 is
still replaced and counted per document."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from humpback_trl.corpus import CorpusConfig, prepare_corpus
from humpback_trl.errors import UserError


def read(path, **options):
    return prepare_corpus(CorpusConfig(source=str(path), min_chars=None, **options), show_progress=False)


def test_every_table_format_gives_the_same_documents(tmp_path):
    rows = [{"id": "a", "text": "## First\n\nOne body."}, {"id": "b", "text": "Second body."}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    (tmp_path / "rows.json").write_text(json.dumps(rows), encoding="utf-8")
    (tmp_path / "rows.csv").write_text('id,text\na,"## First\n\nOne body."\nb,Second body.\n', encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    expected = [("a#0", "First", "One body."), ("b#0", "", "Second body.")]
    for name in ("rows.jsonl", "rows.json", "rows.csv", "rows.parquet"):
        dataset, counts = read(tmp_path / name, id_column="id", doc_format="markdown")
        assert list(zip(dataset["segment_id"], dataset["header"], dataset["text"], strict=True)) == expected, name
        assert counts["documents_read"] == 2 and counts["invalid_utf8_documents"] == 0, name


def test_invalid_utf8_in_csv_and_json_lines_is_replaced_and_counted_per_row(tmp_path):
    (tmp_path / "rows.csv").write_bytes(b'text\n"Caf\xe9 au lait."\nPlain row.\n"cr\xe8me"\n')
    dataset, counts = read(tmp_path / "rows.csv")
    assert dataset["text"] == ["Caf\ufffd au lait.", "Plain row.", "cr\ufffdme"]
    assert counts["invalid_utf8_documents"] == 2
    # A valid file that holds U+FFFD itself is not invalid.
    (tmp_path / "valid.jsonl").write_text(json.dumps({"text": "kept \ufffd as written"}) + "\n", encoding="utf-8")
    assert read(tmp_path / "valid.jsonl")[1]["invalid_utf8_documents"] == 0


def test_a_malformed_file_names_the_file_and_its_line(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": "unterminated\n', encoding="utf-8")
    with pytest.raises(UserError, match=rf"^{broken}: line 2, column 10: not valid JSON \(Unterminated string"):
        read(broken)
    table = tmp_path / "broken.csv"
    table.write_text('text\n"never closed\n', encoding="utf-8")
    with pytest.raises(UserError, match=rf"^{table}: not a readable csv file \(.*EOF inside string"):
        read(table)
    parquet = tmp_path / "broken.parquet"
    parquet.write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match=rf"^{parquet}: not a readable parquet file \(Parquet magic bytes"):
        read(parquet)
