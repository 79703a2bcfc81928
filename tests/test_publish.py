"""Publishing a finished stage, as `humpback run --push_to_hub true` does: the stage's own command rerun with the hub
flags, on the tiny model, pushes exactly the rows it wrote the first time and generates or scores nothing."""

import json

import pytest

from humpback_trl import augment as augment_module
from humpback_trl import curation
from humpback_trl.scripts import augment, curate

SEGMENTS = [
    {"segment_id": f"doc{i}", "text": f"Tide table {i} lists high and low water, hour by hour."} for i in range(6)
]
HUB = ["--hub_prefix", "me/hb", "--push_to_hub", "true"]


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def refuse(name):
    def called(*args, **kwargs):
        raise AssertionError(f"publishing a finished stage called {name}")

    return called


def test_a_finished_augmentation_is_pushed_without_generating(tmp_path, tiny_model_dir, recorded_pushes, monkeypatch):
    corpus = tmp_path / "segments.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in SEGMENTS))
    argv = ["--corpus", str(corpus), "--model_name_or_path", str(tiny_model_dir), "--output_dir",
            str(tmp_path / "aug"), "--max_new_tokens", "6", "--shard_size", "4"]  # fmt: skip
    augment.run(argv)
    written = rows(tmp_path / "aug" / "candidates.jsonl")
    assert recorded_pushes.calls == []

    monkeypatch.setattr(augment_module, "generate", refuse("generate"))
    augment.run([*argv, *HUB])
    [data] = [call for call in recorded_pushes.calls if call.what == "data"]
    assert data.repo == "me/hb-candidates" and data.data.to_list() == written
    assert rows(tmp_path / "aug" / "candidates.jsonl") == written


@pytest.mark.parametrize("mode", ["logits", "generate"])
def test_a_finished_curation_is_pushed_without_scoring(tmp_path, tiny_model_dir, recorded_pushes, monkeypatch, mode):
    candidates = tmp_path / "candidates.jsonl"
    pairs = [{"instruction": f"How is tide table {i} read?", "output": row["text"], "source": "augmented",
              "source_id": row["segment_id"]} for i, row in enumerate(SEGMENTS)]  # fmt: skip
    candidates.write_text("".join(json.dumps(row) + "\n" for row in pairs))
    out = tmp_path / "cur"
    argv = ["--candidates", str(candidates), "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out),
            "--curation_mode", mode, "--curation_max_new_tokens", "6", "--curation_shard_size", "4",
            "--min_score_mass", "0", "--a4_threshold", "2.5", "--a5_threshold", "3", "--calibration_dev_set", "none",
            "--iteration", "1"]  # fmt: skip
    # The splits as the first run wrote them (its jsonl files round their floats to 10 digits).
    written = {split: list(data) for split, data in curate.run(argv).items()}
    assert sorted(written) == ["a4", "a5", "scored"] and len(written["scored"]) == len(SEGMENTS)
    assert [row["source_id"] for row in rows(out / "scored.jsonl")] == [row["source_id"] for row in written["scored"]]

    monkeypatch.setattr(curation, "score_rows", refuse("score_rows"))
    curate.run([*argv, *HUB])
    [data] = [call for call in recorded_pushes.calls if call.what == "data"]
    assert data.repo == "me/hb-curated-1"
    assert {split: list(data.data[split]) for split in data.data} == written
