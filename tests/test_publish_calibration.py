"""A finished curation keeps its calibration: a publishing rerun (the hub flags added) reuses the dev set's scores
from their shards and scores nothing, and a curated folder with an empty split loads back with `load_from_disk`."""

import json

from datasets import load_from_disk

from humpback_trl import curation
from humpback_trl.scripts import curate

HUB = ["--hub_prefix", "me/hb", "--push_to_hub", "true"]
PAIRS = [
    {"instruction": f"How is tide table {i} read?", "output": f"Tide table {i} lists high and low water, hour by hour.",
     "source": "augmented", "source_id": f"doc{i}"}
    for i in range(6)
]  # fmt: skip


def refuse(*args, **kwargs):
    raise AssertionError("publishing a finished curation scored pairs again")


def curate_argv(tmp_path, model_dir, *extra: str) -> list[str]:
    candidates = tmp_path / "candidates.jsonl"
    candidates.write_text("".join(json.dumps(row) + "\n" for row in PAIRS))
    return ["--candidates", str(candidates), "--model_name_or_path", str(model_dir), "--output_dir",
            str(tmp_path / "cur"), "--curation_shard_size", "4", "--min_score_mass", "0", "--iteration", "1",
            *extra]  # fmt: skip


def test_publishing_a_finished_curation_reuses_its_calibration(tmp_path, tiny_model_dir, recorded_pushes, monkeypatch):
    argv = curate_argv(tmp_path, tiny_model_dir, "--a4_threshold", "2.5", "--a5_threshold", "3")
    curate.run(argv)
    calibration = json.loads((tmp_path / "cur" / "report.json").read_text())["iterations"][0]["calibration"]
    assert calibration["dev_set"] == "builtin:dev"
    assert list((tmp_path / "cur" / "calibration" / "shards").glob("*.jsonl"))
    assert recorded_pushes.calls == []

    monkeypatch.setattr(curation, "score_rows", refuse)
    curate.run([*argv, *HUB])
    [data] = [call for call in recorded_pushes.calls if call.what == "data"]
    assert data.repo == "me/hb-curated-1" and len(data.data["scored"]) == len(PAIRS)
    assert json.loads((tmp_path / "cur" / "report.json").read_text())["iterations"][0]["calibration"] == calibration


def test_a_curated_folder_with_an_empty_split_loads_back(tmp_path, tiny_model_dir):
    # No score reaches 6 on the 1-5 scale: A4 and A5 are empty.
    argv = curate_argv(tmp_path, tiny_model_dir, "--a4_threshold", "6", "--a5_threshold", "6",
                       "--calibration_dev_set", "none")  # fmt: skip
    curate.run(argv)
    curated = load_from_disk(str(tmp_path / "cur" / "curated"))
    assert {split: len(data) for split, data in curated.items()} == {"scored": len(PAIRS), "a4": 0, "a5": 0}
    assert curated["a5"].column_names == curated["scored"].column_names
