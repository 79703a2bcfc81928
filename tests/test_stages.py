"""Self-augmentation, self-curation and the SelfCurationCallback, end to end on a tiny model on CPU."""

import json

import pytest
import self_curation_job
import yaml
from conftest import launch_cpu_processes
from datasets import load_from_disk

from humpback_trl.paths import public_name
from humpback_trl.scripts import augment, curate

SEGMENTS = [
    {"segment_id": f"doc{i // 3}#{i % 3}", "text": f"Paragraph {i} explains how the {i}th tide tables are read. " * 4}
    for i in range(14)
]


@pytest.fixture()
def corpus_file(tmp_path):
    path = tmp_path / "segments.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in SEGMENTS))
    return path


def candidates_file(tmp_path, n=10):
    path = tmp_path / "candidates.jsonl"
    rows = [
        {
            "instruction": f"How are tide tables number {i} read?",
            "output": SEGMENTS[i]["text"],
            "source": "augmented",
            "source_id": SEGMENTS[i]["segment_id"],
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_augment_writes_one_candidate_per_segment_and_resumes(tmp_path, tiny_model_dir, corpus_file):
    args = [
        "--corpus",
        str(corpus_file),
        "--model_name_or_path",
        str(tiny_model_dir),
        "--output_dir",
        str(tmp_path / "aug"),
        "--max_new_tokens",
        "8",
        "--shard_size",
        "4",
        "--seed",
        "1",
    ]
    candidates = augment.run(args)
    generated = load_from_disk(str(tmp_path / "aug" / "data"))
    assert generated["source_id"] == [row["segment_id"] for row in SEGMENTS]
    assert generated["output"] == [row["text"] for row in SEGMENTS]
    assert set(generated["source"]) == {"augmented"}
    empty = sum(1 for text in generated["instruction"] if not text.strip())
    assert len(candidates) == len(SEGMENTS) - empty
    report = json.loads((tmp_path / "aug" / "report.json").read_text())
    assert (report["segments"], report["empty_instruction"], report["candidates"]) == (14, empty, len(candidates))
    assert len((tmp_path / "aug" / "candidates.jsonl").read_text().splitlines()) == len(candidates)
    assert "backward model" in (tmp_path / "aug" / "README.md").read_text()
    shards = sorted((tmp_path / "aug" / "shards").glob("shard-*.jsonl"))
    written = [path.stat().st_mtime_ns for path in shards]
    again = augment.run(args)
    assert again["instruction"] == candidates["instruction"]
    assert [path.stat().st_mtime_ns for path in shards] == written, "finished shards must be reused, not rewritten"
    # Another seed would sample other instructions: the old shards are refused rather than passed off as its output.
    with pytest.raises(ValueError, match="different job"):
        augment.run([*args[:-1], "2"])


def test_augment_missing_column_names_it(tmp_path, tiny_model_dir, corpus_file):
    with pytest.raises(KeyError, match="no column 'body'"):
        augment.run(
            ["--corpus", str(corpus_file), "--text_column", "body", "--model_name_or_path", str(tiny_model_dir)]
        )


@pytest.mark.parametrize("mode", ["logits", "generate"])
def test_curate_counts_add_up_and_subsets_nest(tmp_path, tiny_model_dir, mode):
    out = tmp_path / "cur"
    curated = curate.run(
        [
            "--candidates",
            str(candidates_file(tmp_path)),
            "--model_name_or_path",
            str(tiny_model_dir),
            "--output_dir",
            str(out),
            "--curation_mode",
            mode,
            "--curation_max_new_tokens",
            "6",
            # The tiny random model puts under half its probability on the digits: keep every pair, skip the dev set.
            "--min_score_mass",
            "0",
            "--calibration_dev_set",
            "none",
            "--a4_threshold",
            "2.5",
            "--a5_threshold",
            "3",
            "--iteration",
            "2",
        ]
    )
    scored, a4, a5 = curated["scored"], curated["a4"], curated["a5"]
    assert (
        len(scored) == 10
        and set(scored["iteration"]) == {2}
        and set(scored["scorer"]) == {public_name(str(tiny_model_dir))}
    )
    assert set(a5["source_id"]) <= set(a4["source_id"]) <= set(scored["source_id"])
    assert all(s >= 3 for s in a5["score"]) and all(s >= 2.5 for s in a4["score"])
    outside = [
        s for sid, s in zip(scored["source_id"], scored["score"], strict=True) if sid not in set(a4["source_id"])
    ]
    assert all(s is None or s < 2.5 for s in outside)
    report = json.loads((out / "report.json").read_text())["iterations"][0]
    assert sum(report["per_score"].values()) + report["unparsed"] == report["candidates"] == 10
    assert (report["a4"], report["a5"], report["mode"]) == (len(a4), len(a5), mode)
    if mode == "logits":
        assert all(1 <= s <= 5 for s in scored["score"]) and report["unparsed"] == 0
    else:
        assert all(r is not None for r in scored["reasoning"])
    assert {p.name for p in out.iterdir()} >= {
        "scored.jsonl",
        "a4.jsonl",
        "a5.jsonl",
        "report.md",
        "scores.png",
        "README.md",
    }
    assert set(load_from_disk(str(out / "curated")).keys()) == {"scored", "a4", "a5"}
    card = (out / "README.md").read_text()
    assert f"`{public_name(str(tiny_model_dir))}`" in card and "iteration 2" in card and f"{mode} mode" in card
    assert "A5 (score >= 3.0)**: " + str(len(a5)) in card


def forward_recipe(tmp_path, tiny_model_dir, **extra):
    seed = tmp_path / "seed.jsonl"
    seed.write_text(
        "".join(json.dumps({"instruction": f"Add {i} and {i}.", "output": f"{2 * i}."}) + "\n" for i in range(8))
    )
    config = {
        "model_name_or_path": str(tiny_model_dir),
        "use_peft": True,
        "lora_r": 4,
        "lora_target_modules": ["all-linear"],
        "data": [str(seed)],
        "direction": "forward",
        "output_dir": str(tmp_path / "m0"),
        "use_cpu": True,
        "bf16": False,
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "activation_checkpointing": True,
        "save_strategy": "no",
        "report_to": "none",
        **extra,
    }
    path = tmp_path / "m0.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_callback_scores_candidates_with_the_trained_model_and_pushes_them_private(
    tmp_path, tiny_model_dir, recorded_pushes
):
    recipe = forward_recipe(tmp_path, tiny_model_dir, hub_prefix="me/hb", hub_private_repo=True)
    curation_dir = tmp_path / "curation"
    job = [str(candidates_file(tmp_path)), str(curation_dir), "me/hb-curated-1"]
    trainer, callback = self_curation_job.main([*job, "--config", str(recipe), "--push_to_hub", "true"])
    assert callback.summary["candidates"] == 10 and callback.summary["iteration"] == 1
    assert trainer.model.training, "training mode must be restored after scoring"
    scored = [json.loads(line) for line in (curation_dir / "scored.jsonl").read_text().splitlines()]
    assert len(scored) == 10 and all(1 <= row["score"] <= 5 for row in scored)
    assert {row["scorer"] for row in scored} == {"me/hb-m0"}
    assert ("data", "me/hb-curated-1", ["a4", "a5", "scored"]) in recorded_pushes
    # What the Hub calls received, not what the callback holds: the splits and the adapter repo are private.
    assert recorded_pushes.private("data") == [("me/hb-curated-1", True), ("me/hb-m0-data", True)]
    assert recorded_pushes.private("adapter repo") == [("me/hb-m0", True)]
    assert not (tmp_path / "m0" / "scored.jsonl").exists()  # the adapter's folder holds no scores


def test_callback_under_two_processes(tmp_path, tiny_model_dir):
    recipe = forward_recipe(tmp_path, tiny_model_dir)
    curation = tmp_path / "curation"
    job = [str(candidates_file(tmp_path)), str(curation), "", "--config", str(recipe)]
    result = launch_cpu_processes(self_curation_job.__file__, *job)
    assert result.returncode == 0, result.stderr[-3000:]
    scored = load_from_disk(str(curation / "curated"))["scored"]
    assert sorted(scored["source_id"]) == sorted(
        json.loads(line)["source_id"] for line in open(candidates_file(tmp_path))
    )
    assert len(list((curation / "scoring" / "shards").glob("shard-*.jsonl"))) == 4  # 10 pairs in shards of 3
    report = json.loads((curation / "report.json").read_text())["iterations"][0]
    assert sum(report["per_score"].values()) + report["unparsed"] == report["candidates"] == 10
