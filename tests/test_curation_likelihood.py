"""Likelihood-mode curation: fractions, one pair per segment, several instructions per segment, the calibration of
several modes, resume after kill -9, and the real model's likelihood judging a generic instruction."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TEXTS
from datasets import Dataset

from humpback_trl.curation import CurationSettings, curate, effective_thresholds, nearest_count, select
from humpback_trl.pairs import PAIR_FEATURES, make_pair
from humpback_trl.scripts import augment, calibrate

ROOT = Path(__file__).resolve().parents[1]
SEGMENT_A, SEGMENT_B, SEGMENT_C = TEXTS[1] + " " + TEXTS[0], TEXTS[3] + " " + TEXTS[2], TEXTS[4] + " " + TEXTS[6]
POOL = [
    ("How does photosynthesis turn light into sugar?", SEGMENT_A, "a#1"),
    ("What do plants need to make sugar and oxygen?", SEGMENT_A, "a#2"),
    ("How do I bake bread at home?", SEGMENT_B, "b#1"),
    ("Which Python collections are mutable?", SEGMENT_C, "c#1"),
    ("Which city is the French capital?", SEGMENT_C, "c#2"),
    ("False", SEGMENT_C, "c#3"),
]


def pool() -> Dataset:
    rows = [make_pair(instruction, output, "augmented", sid) for instruction, output, sid in POOL]
    return Dataset.from_list(rows, features=PAIR_FEATURES)


def test_fractions_select_the_exact_top_k() -> None:
    scores = [0.5, None, 2.0, -1.0, 2.0, 0.7, 1.5, 0.1, -3.0, 0.9]
    rules = {"a4": ("fraction", 0.45), "a5": ("fraction", 0.2)}
    chosen = select(scores, [True] * 10, rules)
    # k = round(0.2 x 10) = 2 and round(0.45 x 10) = 5 (halves up); ties in pool order.
    assert chosen.indices == {"a5": [2, 4], "a4": [2, 4, 5, 6, 9]}
    assert chosen.rules["a5"] == {"rule": "fraction", "fraction": 0.2, "k": 2, "min_score": 2.0}
    assert effective_thresholds(chosen) == {"a4": 0.7, "a5": 2.0}
    assert [nearest_count(f, 12) for f in (0.083, 0.388, 0.04, 0.05)] == [1, 5, 0, 1]
    # An ineligible pair (low digit mass) is never picked; a fraction larger than the scored pairs keeps them all.
    eligible = [True] * 10
    eligible[2] = False
    assert select(scores, eligible, {"a5": ("fraction", 0.2)}).indices["a5"] == [4, 6]
    assert select(scores, [True] * 10, {"a5": ("fraction", 1.0)}).indices["a5"] == [0, 2, 3, 4, 5, 6, 7, 8, 9]
    none_kept = select(scores, [True] * 10, {"a5": ("fraction", 0.01)})
    assert none_kept.indices["a5"] == [] and effective_thresholds(none_kept) == {"a5": float("inf")}


def test_one_pair_per_segment_keeps_the_best_and_counts_the_rest() -> None:
    scores = [0.4, 0.9, 0.1, 0.3, 0.8, None]
    segments = ["a", "a", "b", "c", "c", "c"]
    chosen = select(scores, [True] * 6, {"a4": ("threshold", 0.0), "a5": ("fraction", 0.5)}, segments)
    assert chosen.indices == {"a4": [1, 2, 4], "a5": [1, 2, 4]}
    assert chosen.same_segment == 2
    assert select(scores, [True] * 6, {"a4": ("threshold", 0.0)}).indices["a4"] == [0, 1, 2, 3, 4]


def test_settings_pick_rules_per_mode_and_refuse_both() -> None:
    assert CurationSettings(curation_mode="likelihood").rules == {"a4": ("fraction", 0.388), "a5": ("fraction", 0.083)}
    assert CurationSettings().rules == {"a4": ("threshold", 4.0), "a5": ("threshold", 4.5)}
    assert CurationSettings(curation_mode="likelihood", a5_threshold=0.2).rules["a5"] == ("threshold", 0.2)
    with pytest.raises(ValueError, match="Set a5_fraction or a5_threshold, not both"):
        CurationSettings(a5_fraction=0.1, a5_threshold=4.5)
    with pytest.raises(ValueError, match=r"a4_fraction must be within \(0, 1\]"):
        CurationSettings(a4_fraction=1.5)
    with pytest.raises(ValueError, match="calibration_modes"):
        CurationSettings(calibration_modes=["vibes"])


def test_likelihood_curation_writes_features_one_pair_per_segment(tmp_path, tiny_model, tiny_tokenizer) -> None:
    settings = CurationSettings(
        curation_mode="likelihood", a4_fraction=1.0, a5_fraction=0.34, calibration_dev_set=None, likelihood_ifd=True
    )
    curated, summary = curate(
        tiny_model, tiny_tokenizer, pool(), settings, iteration=1, scorer="m0", output_dir=tmp_path / "c"
    )
    scored = curated["scored"]
    assert scored["check"] == [None, None, None, None, None, "too_short"]
    for row in scored.select(range(5)):
        assert row["score"] == pytest.approx(row["pmi"] + 0.2 * row["lp_end"] + 0.5 * row["lp_cond"])
        assert row["ifd"] == pytest.approx(row["lp_cond"] / row["lp_prior"])
    assert summary["ifd"] is True
    assert "not computed" not in (tmp_path / "c" / "report.md").read_text()
    # A4: every scored pair but the second-best of segments a and c (the third of c failed its check).
    assert len(curated["a4"]) == 3 and len(set(curated["a4"]["output"])) == 3
    assert summary["same_segment"] == 2
    for output in set(curated["a4"]["output"]):
        best = max((row for row in scored if row["output"] == output and row["score"] is not None),
                   key=lambda row: row["score"])  # fmt: skip
        assert best["source_id"] in curated["a4"]["source_id"]
    # A5: round(0.34 x 6) = 2 pairs, the two best segments' best pairs.
    assert len(curated["a5"]) == 2 and summary["selection"]["a5"]["k"] == 2
    report = (tmp_path / "c" / "report.md").read_text()
    assert "likelihood mode" in report and "A5 = top 34.0% of the pool (k=2" in report
    assert "Kept out of A4 / A5 as a segment's second pair: 2." in report
    assert "A5 (top 34.0% (k=2" in (tmp_path / "c" / "README.md").read_text()


def test_likelihood_curation_leaves_ifd_null_unless_asked(tmp_path, tiny_model, tiny_tokenizer) -> None:
    settings = CurationSettings(curation_mode="likelihood", a4_fraction=1.0, a5_fraction=0.34, calibration_dev_set=None)
    curated, summary = curate(
        tiny_model, tiny_tokenizer, pool(), settings, iteration=1, scorer="m0", output_dir=tmp_path / "c"
    )
    scored = curated["scored"].select(range(5))
    assert scored["lp_prior"] == [None] * 5 and scored["ifd"] == [None] * 5
    assert None not in scored["pmi"] and summary["ifd"] is False
    assert "(PMI, end-of-turn)" in (tmp_path / "c" / "README.md").read_text()
    report = (tmp_path / "c" / "report.md").read_text()
    assert "5 pairs scored (scores from" in report
    assert "lp_prior and ifd not computed (likelihood_ifd: true adds them)." in report


def test_calibration_block_shows_every_configured_mode(tmp_path, tiny_model, tiny_tokenizer) -> None:
    dev = tmp_path / "dev.jsonl"
    rows = [
        {"instruction": i, "output": o, "label": int(n % 2 == 0), "kind": "good" if n % 2 == 0 else "mismatched"}
        for n, (i, o, _) in enumerate(POOL)
    ]
    dev.write_text("".join(json.dumps(row) + "\n" for row in rows))
    settings = CurationSettings(
        min_score_mass=0.0, calibration_dev_set=str(dev), calibration_modes=["logits", "likelihood"]
    )
    _, summary = curate(tiny_model, tiny_tokenizer, pool(), settings, iteration=1, scorer="m0", output_dir=tmp_path)
    scorers = summary["calibration"]["scorers"]
    assert [(row["scorer"], row["mode"]) for row in scorers] == [("m0", "logits"), ("m0 [likelihood]", "likelihood")]
    assert scorers[1]["rules"]["a5"] == {"rule": "fraction", "value": 0.083}
    # The "False" row is check-rejected: no score in either mode, and it counts as the lowest.
    assert all(row["unscored"] == 1 for row in scorers)


def test_calibrate_scores_each_listed_mode(tmp_path, tiny_model_dir) -> None:
    dev = tmp_path / "dev.jsonl"
    rows = [
        {"instruction": i, "output": o, "label": int(n < 3), "kind": "good" if n < 3 else "bad"}
        for n, (i, o, _) in enumerate(POOL)
    ]
    dev.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "cal"
    report = calibrate.run(
        ["--scorer", str(tiny_model_dir), "--dev", str(dev), "--curation_mode", "likelihood", "logits",
         "--min_score_mass", "0", "--output_dir", str(out)]
    )  # fmt: skip
    assert [row["scorer"] for row in report["scorers"]] == [
        f"{tiny_model_dir} [likelihood]", f"{tiny_model_dir} [logits]"
    ]  # fmt: skip
    assert report["auc"] == report["scorers"][0]["auc"] and report["rejected_by_checks"] == 1
    saved = json.loads((out / "calibration.json").read_text())
    assert saved["scorers"][1]["rules"]["a5"] == {"rule": "threshold", "value": 4.5}
    lines = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and lines[5]["checks"][f"{tiny_model_dir} [likelihood]"] == "too_short"
    features = lines[0]["features"][f"{tiny_model_dir} [likelihood]"]
    assert set(features) == {"lp_cond", "lp_uncond", "lp_prior", "lp_end", "pmi", "ifd"}
    assert lines[0]["features"].keys() == {f"{tiny_model_dir} [likelihood]"}


def test_augment_writes_several_instructions_per_segment(tmp_path, tiny_model_dir) -> None:
    corpus = tmp_path / "segments.jsonl"
    corpus.write_text("".join(json.dumps({"segment_id": f"doc{i}", "text": TEXTS[i]}) + "\n" for i in range(3)))
    candidates = augment.run(
        ["--corpus", str(corpus), "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "a"),
         "--instructions_per_segment", "3", "--max_new_tokens", "8", "--engine", "transformers"]
    )  # fmt: skip
    ids = [f"doc{i}#{k}" for i in range(3) for k in (1, 2, 3)]
    assert sorted(candidates["source_id"]) == sorted(ids)
    assert [candidates.filter(lambda r, i=i: r["source_id"].startswith(f"doc{i}#"))["output"] for i in range(3)] == [
        [TEXTS[i]] * 3 for i in range(3)
    ]
    assert json.loads((tmp_path / "a" / "report.json").read_text())["segments"] == 3


def curate_args(tmp_path: Path, model_dir: Path, name: str) -> list[str]:
    candidates = tmp_path / "candidates.jsonl"
    if not candidates.exists():
        candidates.write_text("".join(json.dumps(row) + "\n" for row in pool().to_list()))
    return ["--candidates", str(candidates), "--model_name_or_path", str(model_dir), "--output_dir",
            str(tmp_path / name), "--curation_mode", "likelihood", "--curation_shard_size", "1",
            "--calibration_dev_set", "none"]  # fmt: skip


@pytest.mark.slow
def test_likelihood_curation_resumes_after_kill_9(tmp_path, tiny_model_dir) -> None:
    """Killed with SIGKILL mid-scoring, a rerun keeps the finished shards and ends with an uninterrupted run's pool."""
    from humpback_trl.scripts import curate as curate_script

    args = curate_args(tmp_path, tiny_model_dir, "killed")
    shards_dir = tmp_path / "killed" / "scoring" / "shards"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "humpback_trl.scripts.curate", *args], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not list(shards_dir.glob("shard-*.jsonl")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {stderr[-2000:]}"
    finished = {path.name: path.read_text() for path in shards_dir.glob("shard-*.jsonl")}
    assert 1 <= len(finished) < len(POOL), "the kill must land mid-way"
    resumed = curate_script.run(args)
    assert {name: (shards_dir / name).read_text() for name in finished} == finished, "finished shards are kept"
    whole = curate_script.run(curate_args(tmp_path, tiny_model_dir, "whole"))
    assert resumed["scored"]["source_id"] == [sid for _, _, sid in POOL]
    assert resumed["scored"].to_list() == whole["scored"].to_list()
    assert resumed["a5"].to_list() == whole["a5"].to_list()


@pytest.mark.slow
def test_smollm2_scores_a_good_pair_above_its_output_under_a_generic_instruction(smollm2_dir) -> None:
    from humpback_trl.likelihood import likelihood_features
    from humpback_trl.modeling import InferenceModelArguments, load_model

    model, tokenizer = load_model(InferenceModelArguments(model_name_or_path=str(smollm2_dir), dtype="float32"))
    output = (
        "Use the list's reverse() method to reverse it in place: `numbers.reverse()`. To get a reversed copy and "
        "keep the original, slice it with a step of -1: `reversed_numbers = numbers[::-1]`."
    )
    good, generic = likelihood_features(
        model, tokenizer, ["How do I reverse a list in Python?", "Provide a more specific answer."], [output] * 2
    )
    assert good.score > generic.score and good.pmi > generic.pmi
    assert good.lp_uncond == generic.lp_uncond and good.lp_prior == generic.lp_prior
