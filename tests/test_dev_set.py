"""The extended bundled dev set: instruction-side corruptions, real candidates labelled by reading, and how the
calibration measures a kind that holds both labels."""

import pytest

from humpback_trl.calibration import (
    CORRUPTIONS,
    GENERIC_INSTRUCTIONS,
    GOOD,
    INSTRUCTION_CORRUPTIONS,
    REAL,
    build_bundled_dev_set,
    bundled_dev_pairs,
    bundled_real_candidates,
    calibration_metrics,
    dev_set_from_pairs,
    load_dev_set,
)
from humpback_trl.instruction_checks import CHECKS, InstructionChecks


def test_bundled_file_is_the_built_dev_set() -> None:
    dev = load_dev_set("builtin:dev")
    assert dev.to_list() == build_bundled_dev_set().to_list()
    pairs, real = bundled_dev_pairs(), bundled_real_candidates()
    counts = {kind: dev["kind"].count(kind) for kind in (GOOD, *CORRUPTIONS, *INSTRUCTION_CORRUPTIONS, REAL)}
    assert counts == {**dict.fromkeys((GOOD, *CORRUPTIONS), 20), **dict.fromkeys(INSTRUCTION_CORRUPTIONS, 5),
                      REAL: len(real)}  # fmt: skip
    assert len(dev) == 120 + len(real) and sum(dev["label"]) == 20 + sum(r["label"] for r in real)
    assert all(r["writer"] and r["label"] in (0, 1) for r in real) and {0, 1} <= {r["label"] for r in real}
    by_id = {pair["id"]: pair for pair in pairs}
    instructions = {pair["instruction"] for pair in pairs}
    for row in dev:
        if row["kind"] not in INSTRUCTION_CORRUPTIONS:
            continue
        pair = by_id[row["pair_id"]]
        assert row["output"] == pair["output"] and row["label"] == 0
        if row["kind"] == "generic":
            assert row["instruction"] in GENERIC_INSTRUCTIONS
        elif row["kind"] == "loop":
            opening = " ".join(pair["instruction"].split()[:4])
            assert row["instruction"].count(opening) == 5 and row["instruction"].endswith(pair["instruction"])
        elif row["kind"] == "echo":
            assert pair["output"].startswith(row["instruction"]) and len(row["instruction"]) < len(pair["output"])
        else:
            assert row["instruction"] in instructions - {pair["instruction"]}


def test_checks_reject_the_loops_and_echoes_of_the_dev_set() -> None:
    dev = load_dev_set("builtin:dev")
    checks = InstructionChecks(enabled=CHECKS)
    reasons = {kind: [] for kind in INSTRUCTION_CORRUPTIONS}
    good = []
    for row in dev:
        reason = checks.reason(row["instruction"], row["output"])
        if row["kind"] in reasons:
            reasons[row["kind"]].append(reason)
        elif row["kind"] == GOOD:
            good.append(reason)
    assert good == [None] * 20, "no written good pair is rejected"
    assert reasons["loop"] == ["loop"] * 5 and reasons["echo"] == ["copied"] * 5
    assert reasons["generic"] == ["unrelated", "prompt_echo", "prompt_echo", "unrelated", "unrelated"]
    # Another pair's question is well formed; most share no content word with the answer; the one left is the
    # score's to judge.
    assert reasons["other_instruction"] == ["unrelated", "unrelated", "unrelated", None, "unrelated"]


def test_a_kind_with_both_labels_is_measured_on_its_own_rows() -> None:
    scores = [0.9, 0.8, 0.1, 0.5, 0.7]
    labels = [1, 1, 0, 1, 0]
    kinds = [GOOD, GOOD, "blog", REAL, REAL]
    metrics = calibration_metrics(scores, labels, kinds, {"a5": 0.75}, scorer="s")
    # blog: below both good rows (the real good row is not its reference); real: 0.5 below 0.7 within the kind.
    assert metrics["auc_by_kind"] == {"blog": 1.0, REAL: 0.0}


def test_real_candidates_need_a_label() -> None:
    pairs = bundled_dev_pairs()[:2]
    with pytest.raises(ValueError, match="real candidate 0: needs an id, an output and a label 0 or 1"):
        dev_set_from_pairs(pairs, [{"id": "r", "instruction": "q", "output": "o", "label": 2}])
