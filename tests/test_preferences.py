"""`humpback preferences`: self-rewarding DPO pairs and KTO rows, on the tiny model on CPU."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from datasets import Dataset, load_from_disk
from sft_adapter import SYSTEM_PROMPT, make_sft_adapter

from humpback_trl.collators import SwappedFieldCollator
from humpback_trl.pairs import PAIR_FEATURES
from humpback_trl.paths import public_name
from humpback_trl.preferences import PreferenceArguments, dpo_pairs, kto_label, kto_rows, pick_pair
from humpback_trl.scripts import preferences
from humpback_trl.tagging import SEED_TAG, WEB_TAG

INSTRUCTIONS = [f"Explain how tide table number {i} is read, step by step." for i in range(8)]


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    return make_sft_adapter(tiny_model_dir, tmp_path_factory.mktemp("m1"))


def write_pool(path, scores, masses=None):
    masses = masses or [0.9] * len(scores)
    rows = [
        {
            "instruction": INSTRUCTIONS[i % len(INSTRUCTIONS)],
            "output": f"Tide table {i} lists high and low water.",
            "source": "seed" if i == 0 else "augmented",
            "source_id": f"doc{i}",
            "score": score,
            "score_mass": mass,
        }
        for i, (score, mass) in enumerate(zip(scores, masses, strict=True))
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def dpo_args(tmp_path, adapter, out="prefs", *extra):
    instructions = tmp_path / "scored.jsonl"
    if not instructions.exists():
        write_pool(instructions, [4.6, 3.0, 4.1, 1.2, 4.8, 2.0, 4.5, 3.3])
    return [
        "--kind", "dpo", "--adapter", str(adapter), "--instructions", str(instructions),
        "--output_dir", str(tmp_path / out), "--num_samples", "3", "--max_new_tokens", "8", "--shard_size", "2",
        "--min_score_mass", "0", "--seed", "3", *extra,
    ]  # fmt: skip


def test_pick_pair_takes_best_and_worst_and_applies_the_margin():
    assert pick_pair([3.1, 4.2, 2.0, 4.2], margin=0.5) == (1, 2, "kept")
    assert pick_pair([3.1, 3.4, 3.2], margin=0.5) == (1, 0, "under_margin")
    assert pick_pair([3.0, 3.0], margin=0.0)[2] == "under_margin"  # a tie says nothing, even with no margin
    assert pick_pair([None, 4.0, None], margin=0.0) == (-1, -1, "too_few")
    assert pick_pair([None, 4.0, 1.0], margin=3.0) == (1, 2, "kept")  # exactly the margin is kept


def test_dpo_pairs_count_every_instruction_once():
    samples = Dataset.from_list(
        [
            {"source_id": "a", "prompt": [{"role": "user", "content": "q"}], "answers": ["x", "y", ""],
             "scores": [4.0, 2.0, None], "masses": [0.9, 0.9, None]},
            {"source_id": "b", "prompt": [{"role": "user", "content": "q"}], "answers": ["x", "y", "z"],
             "scores": [3.0, 3.2, None], "masses": [0.9, 0.9, 0.1]},
            {"source_id": "c", "prompt": [{"role": "user", "content": "q"}], "answers": ["x", "y", "z"],
             "scores": [None, 3.0, None], "masses": [None, 0.8, None]},
        ]
    )  # fmt: skip
    pairs, counts = dpo_pairs(samples, margin=0.5)
    assert counts == {
        "instructions": 3, "answers_sampled": 9, "blank_answers": 1, "low_mass_answers": 1, "unscored_answers": 2,
        "too_few_scored_answers": 1, "dropped_under_margin": 1, "pairs_kept": 1,
    }  # fmt: skip
    assert pairs.to_list() == [
        {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "x"}],
         "rejected": [{"role": "assistant", "content": "y"}], "chosen_score": 4.0, "rejected_score": 2.0,
         "source_id": "a"}
    ]  # fmt: skip


def test_kto_labels_follow_the_thresholds(tiny_tokenizer, tmp_path):
    assert [kto_label(s, 4.5, 2.5) for s in (4.5, 4.49, 2.51, 2.5, 1.0, None)] == [True, None, None, False, False, None]
    pool = Dataset.from_json(str(write_pool(tmp_path / "p.jsonl", [4.6, 3.0, 4.5, 2.5, 1.2, 4.9, None, 4.7],
                                            [0.9] * 7 + [0.2])), features=PAIR_FEATURES)  # fmt: skip
    rows, counts = kto_rows(pool, SwappedFieldCollator(tiny_tokenizer, direction="forward"), 4.5, 2.5, min_mass=0.5)
    assert counts == {"scored_pool": 8, "desirable": 3, "undesirable": 2, "between_thresholds": 1, "low_mass": 1,
                      "unscored": 1}  # fmt: skip
    assert [(r["source_id"], r["label"], r["score"]) for r in rows] == [
        ("doc0", True, 4.6), ("doc2", True, 4.5), ("doc3", False, 2.5), ("doc4", False, 1.2), ("doc5", True, 4.9)
    ]  # fmt: skip
    # The prompt is the SFT prompt of the pair: its source's tag, as at training.
    assert rows[0]["prompt"] == [{"role": "user", "content": f"{INSTRUCTIONS[0]}\n\n{SEED_TAG}"}]
    assert rows[1]["prompt"][-1]["content"].endswith(WEB_TAG)
    assert rows[1]["completion"] == [{"role": "assistant", "content": "Tide table 2 lists high and low water."}]


def test_arguments_refuse_overlapping_thresholds_and_missing_inputs():
    with pytest.raises(ValueError, match="low_threshold"):
        PreferenceArguments(kind="kto", scored_pool="x.jsonl", a5_threshold=2.0)
    with pytest.raises(ValueError, match="needs `instructions`"):
        PreferenceArguments(kind="dpo")
    with pytest.raises(ValueError, match="num_samples"):
        PreferenceArguments(instructions=["x.jsonl"], num_samples=1)


def test_self_rewarding_pairs_respect_the_margin(tmp_path, adapter):
    preferences.run(dpo_args(tmp_path, adapter, "prefs", "--margin", "0"))
    samples = load_from_disk(str(tmp_path / "prefs" / "data"))
    assert samples["source_id"] == [f"doc{i}" for i in range(8)]
    assert all(len(answers) == 3 for answers in samples["answers"])
    # M_k's prompt layout (its saved system prompt) and both inference tags.
    assert samples[0]["prompt"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"{INSTRUCTIONS[0]}\n\n{SEED_TAG} {WEB_TAG}"},
    ]
    gaps = {}
    for sample in samples:
        scored = [s for s in sample["scores"] if s is not None]
        if len(scored) >= 2:
            gaps[sample["source_id"]] = max(scored) - min(scored)
    margin = sorted(gaps.values())[len(gaps) // 2]
    assert 0 < margin

    # Another margin reuses the sampled shards (the margin only selects) and keeps exactly the pairs at or above it.
    shards = sorted((tmp_path / "prefs" / "shards").glob("shard-*.jsonl"))
    written = [path.stat().st_mtime_ns for path in shards]
    pairs = preferences.run(dpo_args(tmp_path, adapter, "prefs", "--margin", str(margin)))
    assert [path.stat().st_mtime_ns for path in shards] == written
    assert set(pairs["source_id"]) == {sid for sid, gap in gaps.items() if gap >= margin}
    assert all(c - r >= margin for c, r in zip(pairs["chosen_score"], pairs["rejected_score"], strict=True))
    assert all(row["chosen"][0]["role"] == "assistant" for row in pairs)
    report = json.loads((tmp_path / "prefs" / "report.json").read_text())
    assert report["instructions"] == 8 and report["answers_sampled"] == 24
    assert report["pairs_kept"] == len(pairs) and report["dropped_under_margin"] == len(gaps) - len(pairs)
    assert report["pairs_kept"] + report["dropped_under_margin"] + report["too_few_scored_answers"] == 8
    lines = (tmp_path / "prefs" / "dpo.jsonl").read_text().splitlines()
    assert [json.loads(line)["source_id"] for line in lines] == pairs["source_id"]
    card = (tmp_path / "prefs" / "README.md").read_text()
    assert f"pairs_kept**: {len(pairs)}" in card and public_name(str(adapter)) in card


def test_kto_rows_from_the_scored_pool_use_the_adapters_prompt_layout(tmp_path, adapter):
    pool = write_pool(tmp_path / "scored.jsonl", [4.6, 3.0, 1.0, 2.4])
    rows = preferences.run(["--kind", "kto", "--adapter", str(adapter), "--scored_pool", str(pool),
                            "--output_dir", str(tmp_path / "kto")])  # fmt: skip
    assert rows["label"] == [True, False, False]
    assert rows[0]["prompt"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    # TRL renders each row with the template arguments the stage rendered with (the pinned date of Llama 3).
    assert rows[0]["chat_template_kwargs"] == {"date_string": "26 Jul 2024"}
    report = json.loads((tmp_path / "kto" / "report.json").read_text())
    assert (report["desirable"], report["undesirable"], report["between_thresholds"]) == (1, 2, 1)
    assert len(load_from_disk(str(tmp_path / "kto" / "kto"))) == 3


def test_push_names_the_preference_repo(tmp_path, adapter, monkeypatch):
    from huggingface_hub import DatasetCard

    pushed = []
    monkeypatch.setattr(Dataset, "push_to_hub", lambda self, repo, **kw: pushed.append(("data", repo, len(self))))
    monkeypatch.setattr(DatasetCard, "push_to_hub", lambda self, repo, **kw: pushed.append(("card", repo)))
    pool = write_pool(tmp_path / "scored.jsonl", [4.6, 1.0])
    preferences.run(["--kind", "kto", "--adapter", str(adapter), "--scored_pool", str(pool), "--output_dir",
                     str(tmp_path / "kto"), "--hub_prefix", "me/hb", "--push_to_hub", "true"])  # fmt: skip
    assert pushed == [("data", "me/hb-preferences-kto", 2), ("card", "me/hb-preferences-kto")]


def test_resume_after_kill_9_loses_and_duplicates_nothing(tmp_path, adapter):
    """A run killed with SIGKILL mid-way resumes from its finished shards and ends with the data of a run that was
    never interrupted."""
    args = dpo_args(tmp_path, adapter, "killed", "--shard_size", "1", "--num_samples", "4", "--max_new_tokens", "16")
    shards_dir = tmp_path / "killed" / "shards"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT / "tests")}
    process = subprocess.Popen([sys.executable, "-m", "humpback_trl.scripts.preferences", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not list(shards_dir.glob("shard-*.jsonl")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {stderr[-2000:]}"
    finished = {path.name: path.read_text() for path in shards_dir.glob("shard-*.jsonl")}
    assert 1 <= len(finished) < 8, "the kill must land mid-way"
    assert not (tmp_path / "killed" / "dpo.jsonl").exists()

    resumed = preferences.run(args)
    assert {name: (shards_dir / name).read_text() for name in finished} == finished, "finished shards are kept"
    samples = load_from_disk(str(tmp_path / "killed" / "data"))
    assert samples["source_id"] == [f"doc{i}" for i in range(8)]  # each instruction exactly once, in order
    uninterrupted = preferences.run(
        dpo_args(tmp_path, adapter, "whole", "--shard_size", "1", "--num_samples", "4", "--max_new_tokens", "16")
    )
    assert load_from_disk(str(tmp_path / "whole" / "data"))["answers"] == samples["answers"]
    assert resumed.to_list() == uninterrupted.to_list()
