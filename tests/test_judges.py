"""Judges: accuracy and position consistency on hand-made labelled pairs with stub judges, the bundled pairwise set,
the methods on the tiny model against the scorers they wrap, and `humpback calibrate --judge`."""

import json

import pytest

from humpback_trl import judges
from humpback_trl.judges import (
    Judge,
    JudgeOptions,
    bundled_pairwise_dev,
    calibrate_judge,
    load_pairwise_dev,
    pointwise_verdict,
    read_judgment,
    verdict,
)
from humpback_trl.pairs import builtin_path
from humpback_trl.scripts import calibrate as calibrate_script

DEV = [
    {"prompt": "q1", "chosen": "good one", "rejected": "bad", "kind": "truncated", "pair_id": "1"},
    {"prompt": "q2", "chosen": "good two", "rejected": "worse", "kind": "truncated", "pair_id": "2"},
    {"prompt": "q3", "chosen": "good three", "rejected": "nope", "kind": "blog", "pair_id": "3"},
    {"prompt": "q4", "chosen": "good four", "rejected": "meh", "kind": "blog", "pair_id": "4"},
]


class StubJudge:
    """A judge whose raw judgments are scripted per instruction, in place of a model's."""

    def __init__(self, method, raws, margin=0.0):
        self.method, self.raws, self.margin = method, raws, margin

    @property
    def positional(self):
        return self.method == "pairwise"

    def judge(self, rows):
        return [self.raws[row["instruction"]] for row in rows]


def test_pairwise_accuracy_counts_both_orders_and_position_consistency() -> None:
    # (p_A, p_B) with chosen shown first, then with chosen shown second.
    raws = {
        "q1": {"p_a_first": 0.8, "p_b_first": 0.1, "p_a_second": 0.1, "p_b_second": 0.7},  # chosen in both orders
        "q2": {"p_a_first": 0.9, "p_b_first": 0.1, "p_a_second": 0.9, "p_b_second": 0.1},  # always A: one of two
        "q3": {"p_a_first": 0.2, "p_b_first": 0.6, "p_a_second": 0.6, "p_b_second": 0.2},  # rejected in both orders
        "q4": {"p_a_first": 0.3, "p_b_first": 0.3, "p_a_second": 0.1, "p_b_second": 0.4},  # undecided, then chosen
    }
    metrics, records = calibrate_judge(
        StubJudge("pairwise", raws), DEV, judge_name="stub", dev_set="hand", min_accuracy=0.6
    )
    # Choices: q1 1, 1; q2 1, 0; q3 0, 0; q4 0.5, 1 -> 4.5 of 8.
    assert metrics["pairwise_accuracy"] == 0.5625
    assert metrics["accuracy_by_kind"] == {"truncated": 0.75, "blog": 0.375}
    # Both orders agree for q1 and q3 only; the first-shown answer is preferred in 4 of 8 choices.
    assert metrics["position_consistency"] == 0.5 and metrics["first_position_rate"] == 0.5
    assert [r["verdict"] for r in records] == [1, 0, -1, 0]
    assert metrics["verdict_accuracy"] == 0.5 and metrics["decided"] == 0.5
    assert metrics["undecided"] is True and metrics["method"] == "pairwise" and metrics["pairs"] == 4
    assert (records[1]["prefer_a_when_first"], records[1]["prefer_a_when_second"]) == pytest.approx((0.9, 0.1))


def test_pointwise_accuracy_with_a_margin_and_no_position() -> None:
    raws = {
        "q1": {"score_a": 4.0, "score_b": 3.0},
        "q2": {"score_a": 3.05, "score_b": 3.0},  # within the margin: a tie, half a point
        "q3": {"score_a": 2.0, "score_b": 3.5},
        "q4": {"score_a": 4.5, "score_b": 1.0},
    }
    metrics, records = calibrate_judge(
        StubJudge("rubric", raws, margin=0.1), DEV, judge_name="stub", dev_set="hand", min_accuracy=0.6
    )
    assert [r["verdict"] for r in records] == [1, 0, -1, 1]
    assert metrics["pairwise_accuracy"] == 0.625 and metrics["accuracy_by_kind"] == {"truncated": 0.75, "blog": 0.5}
    assert "position_consistency" not in metrics and metrics["undecided"] is False


def test_verdict_rules() -> None:
    assert verdict(0.9, 0.6) == 1 and verdict(0.2, 0.4) == -1
    assert verdict(0.9, 0.1) == 0  # each order prefers the answer shown first: position bias, a tie
    cases = ((3.2, 3.0), (3.0, 3.05), (2.0, 3.0), (None, 1.0))
    assert [pointwise_verdict(a, b, 0.1) for a, b in cases] == [1, 0, -1, 0]
    read = read_judgment({"p_a_first": 0.0, "p_b_first": 0.0, "p_a_second": 0.2, "p_b_second": 0.6}, 0.0)
    assert read["choices"] == [0.5, 1.0] and read["verdict"] == 0  # no mass on A or B: undecided


def test_a_looping_answer_loses_whatever_its_score() -> None:
    # Likelihood loves repetition: builtin:pairwise_dev's loops outscored the answers they repeat in 19 of 20 pairs.
    assert judges.loops("Restart the router. Restart the router. Restart the router.")
    assert judges.loops("try it and " * 4 + "stop")  # 7 of 11 trigrams repeat
    assert not judges.loops("Restart the router, then wait a minute and restart the modem.")
    assert not judges.loops("Restart the router. Restart the router. Then wait a minute and restart the modem.")
    assert not judges.loops("")
    cases = ((9.0, 1.0, True, False), (1.0, 9.0, False, True), (3.2, 3.0, True, True), (3.0, 3.0, False, False))
    assert [pointwise_verdict(a, b, 0.1, la, lb) for a, b, la, lb in cases] == [-1, 1, 1, 0]
    read = read_judgment({"score_a": 9.0, "score_b": 1.0, "loops_a": True, "loops_b": False}, 0.0)
    assert (read["verdict"], read["choices"]) == (-1, [0.0])
    # Judgments saved before the rule have no flags: the scores decide.
    assert read_judgment({"score_a": 9.0, "score_b": 1.0}, 0.0)["verdict"] == 1


def test_the_loop_rule_flags_every_bundled_loop_and_no_good_answer() -> None:
    rows = bundled_pairwise_dev()
    assert not any(judges.loops(row["chosen"]) for row in rows)
    assert [row["kind"] for row in rows if judges.loops(row["rejected"])] == ["loop"] * 20


def test_bundled_pairwise_dev_is_the_builders_output() -> None:
    shipped = [json.loads(line) for line in builtin_path("pairwise_dev").read_text(encoding="utf-8").splitlines()]
    assert shipped == bundled_pairwise_dev()
    assert len(shipped) == 140
    kinds = [row["kind"] for row in shipped]
    assert {kind: kinds.count(kind) for kind in judges.PAIRWISE_DEV_KINDS} == dict.fromkeys(
        judges.PAIRWISE_DEV_KINDS, 20
    )
    first = shipped[:5]
    assert {row["chosen"] for row in first} == {first[0]["chosen"]} and first[0]["chosen"].startswith("Active noise")
    truncated, off_topic = first[0]["rejected"], first[1]["rejected"]
    assert first[0]["chosen"].startswith(truncated) and len(truncated) < 0.45 * len(first[0]["chosen"])
    assert off_topic == shipped[50]["chosen"]  # the answer of the pair half the set away
    assert first[4]["chosen"] in first[4]["rejected"] and "Subscribe" in first[4]["rejected"]
    assert load_pairwise_dev()[7] == {**shipped[7]}
    # The degenerate kinds follow all five corruptions: loop, then word salad, per pair.
    assert [row["pair_id"] for row in shipped[98:102]] == ["dev-20/blog", "dev-20/navigation", "dev-01/loop",
                                                           "dev-01/word_salad"]  # fmt: skip
    loop, salad = shipped[100]["rejected"], shipped[101]["rejected"]
    sentence = "Active noise-cancelling headphones fight sound with sound."
    assert loop == " ".join([sentence] * 12) and abs(len(loop) - len(first[0]["chosen"])) < len(sentence)
    assert salad != first[0]["chosen"] and sorted(salad.split()) == sorted(first[0]["chosen"].split())
    assert salad.startswith("the to most fight up with destructive")  # shuffled with the pair's index as seed


def test_pairwise_dev_files_in_trl_formats(tmp_path) -> None:
    path = tmp_path / "prefs.jsonl"
    rows = [
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
         "chosen": [{"role": "assistant", "content": "Hello."}], "rejected": [{"role": "assistant", "content": "No."}]},
        {"prompt": "Name a colour.", "chosen": "Red.", "rejected": "Table.", "kind": "off_topic"},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert load_pairwise_dev(str(path)) == [
        {"prompt": "Hi?", "chosen": "Hello.", "rejected": "No.", "kind": "pair", "pair_id": f"{path}:0"},
        {"prompt": "Name a colour.", "chosen": "Red.", "rejected": "Table.", "kind": "off_topic",
         "pair_id": f"{path}:1"},
    ]  # fmt: skip
    path.write_text(json.dumps({"prompt": "q", "chosen": "same", "rejected": "same"}) + "\n")
    with pytest.raises(ValueError, match="row 0: chosen and rejected are the same text"):
        load_pairwise_dev(str(path))
    path.write_text(json.dumps({"instruction": "q", "output": "a", "label": 1}) + "\n")
    with pytest.raises(KeyError, match=r"no column\(s\) \['prompt', 'chosen', 'rejected'\]"):
        load_pairwise_dev(str(path))


def test_methods_wrap_the_scorers_and_score_each_answer_once(tiny_model, tiny_tokenizer) -> None:
    from humpback_trl.likelihood import likelihood_features
    from humpback_trl.scoring import score_pairs

    pairs = [("Name a colour.", "Red."), ("Write a poem.", "Roses are red."), ("Name a colour.", "Red.")]
    rubric = Judge(tiny_model, tiny_tokenizer, "rubric", JudgeOptions(batch_size=2)).scores(pairs)
    expected = [r.score for r in score_pairs(tiny_model, tiny_tokenizer, pairs[:2], batch_size=2)]
    assert rubric == pytest.approx([*expected, expected[0]], abs=1e-5)
    likely = Judge(tiny_model, tiny_tokenizer, "likelihood", JudgeOptions()).scores(pairs)
    weights = judges.JUDGE_LIKELIHOOD_WEIGHTS
    features = likelihood_features(
        tiny_model, tiny_tokenizer, [i for i, _ in pairs[:2]], [o for _, o in pairs[:2]], weights=weights
    )
    assert weights.cond > 0  # fluency counts: word salad must not win on relevance alone
    assert likely == pytest.approx([features[0].score, features[1].score, features[0].score], abs=1e-5)
    looping = "Red is red. Red is red. Red is red."
    (raw,) = Judge(tiny_model, tiny_tokenizer, "likelihood", JudgeOptions()).judge(
        [{"instruction": "Name a colour.", "a": looping, "b": "Red."}]
    )
    assert (raw["loops_a"], raw["loops_b"]) == (True, False) and read_judgment(raw, 0.0)["verdict"] == -1
    pairwise = Judge(tiny_model, tiny_tokenizer, "pairwise", JudgeOptions())
    (raw,) = pairwise.judge([{"instruction": "Name a colour.", "a": "Red.", "b": "Table."}])
    assert set(raw) == {"p_a_first", "p_b_first", "p_a_second", "p_b_second"} and 0 < raw["p_a_first"] < 1
    with pytest.raises(ValueError, match="judge_method must list methods among"):
        Judge(tiny_model, tiny_tokenizer, "vibes", JudgeOptions())


def test_calibrate_command_with_a_judge(tmp_path, tiny_model_dir) -> None:
    dev = tmp_path / "pairs.jsonl"
    dev.write_text("".join(json.dumps(row) + "\n" for row in DEV))
    out = tmp_path / "cal"
    argv = ["--judge", str(tiny_model_dir), "--pairwise_dev", str(dev), "--judge_method", "pairwise", "likelihood",
            "--output_dir", str(out)]  # fmt: skip
    report = calibrate_script.run(argv)
    written = json.loads((out / "calibration.json").read_text())
    assert written == report and [m["method"] for m in written["methods"]] == ["pairwise", "likelihood"]
    assert written["method"] == "pairwise" and written["pairs"] == 4 and 0 <= written["pairwise_accuracy"] <= 1
    assert set(written["accuracy_by_kind"]) == {"truncated", "blog"} and "position_consistency" in written
    assert "position_consistency" not in written["methods"][1]
    lines = (out / "judgments.jsonl").read_text().splitlines()
    assert [json.loads(line)["method"] for line in lines] == ["pairwise"] * 4 + ["likelihood"] * 4
    with pytest.raises(ValueError, match="--scorer .* or --judge"):
        calibrate_script.run(["--judge", "a", "--scorer", "b"])
