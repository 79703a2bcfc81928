"""Judge calibration: metrics against hand-computed values, the bundled dev and evaluation sets, the oasst builder."""

import json

import pytest
from conftest import random_lora_adapter
from datasets import Dataset

from humpback_trl.calibration import (
    BUNDLED_DEV_SET,
    CORRUPTIONS,
    GOOD,
    OASST_KIND,
    build_bundled_dev_set,
    bundled_dev_pairs,
    calibration_markdown,
    calibration_metrics,
    load_dev_set,
    load_oasst_dev_set,
    oasst_dev_set,
    precision_recall,
    roc_auc,
    spearman,
    truncate,
)
from humpback_trl.errors import UserError
from humpback_trl.pairs import builtin_path
from humpback_trl.tiny import build_model


def test_roc_auc_by_hand() -> None:
    # Ascending ranks 0.5:1 0.6:2 0.7:3 0.8:4 0.9:5; good rows at ranks 5 and 3: U = 8 - 3 = 5 of 2 x 3 pairs.
    assert roc_auc([0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 0, 0]) == pytest.approx(5 / 6)
    # A tie between a good and a bad row counts half: U = 2.5 - 1 = 1.5 of 1 x 2.
    assert roc_auc([1.0, 1.0, 0.0], [1, 0, 0]) == pytest.approx(0.75)
    # A missing score ranks below every score.
    assert roc_auc([None, 2.0], [1, 0]) == 0.0
    assert roc_auc([3.0, 2.0], [1, 1]) is None


def test_spearman_by_hand() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # b's ranks [1, 2, 3.5, 5, 3.5]: cov 8, variances 10 and 9.5.
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / 95**0.5)
    assert spearman([1, None, 3, 4], [1, 2, None, 4]) is None  # two rows scored by both


def test_precision_recall_by_hand() -> None:
    assert precision_recall([True, True, False, True], [1, 0, 1, 0]) == (pytest.approx(1 / 3), 0.5)
    assert precision_recall([False, False], [1, 0]) == (None, 0.0)


def test_calibration_metrics_per_kind_and_mass_floor() -> None:
    scores = [4.8, 4.6, 4.2, 4.9, 1.5, 3.0]
    labels = [1, 1, 1, 0, 0, 0]
    kinds = [GOOD, GOOD, GOOD, "blog", "truncated", "blog"]
    eligible = [True, False, True, True, True, True]  # the second good row has too little digit mass
    metrics = calibration_metrics(scores, labels, kinds, {"a4": 4.0, "a5": 4.5}, scorer="m0", eligible=eligible)
    assert metrics["scorer"] == "m0" and (metrics["pairs"], metrics["good"]) == (6, 3)
    # Good ranks 4, 5, 3 (of 4.2 < 4.6 < 4.8 < 4.9 at the top; 1.5, 3.0 below): U = 12 - 6 = 6 of 9.
    assert metrics["auc"] == pytest.approx(round(6 / 9, 4))
    # Blog vs good: 4.9 beats all three good, 3.0 none: 3 of 6. Truncated (1.5) is below every good row.
    assert metrics["auc_by_kind"] == {"blog": 0.5, "truncated": 1.0}
    # A5 selects 4.8 and 4.9 (4.6 lacks mass): precision 1/2, recall 1/3. A4 adds 4.2: 2/3 and 2/3.
    assert metrics["precision"] == {"a4": pytest.approx(0.6667), "a5": 0.5}
    assert metrics["recall"] == {"a4": pytest.approx(0.6667), "a5": pytest.approx(0.3333)}
    assert metrics["passed_by_kind"]["a5"] == {"blog": 0.5, GOOD: pytest.approx(0.3333), "truncated": 0.0}
    table = "\n".join(calibration_markdown({"dev_set": "d", "scorers": [metrics], "agreement": {"j": 0.5}}))
    assert "| m0 | 0.67 | 0.50 | 1.00 | 0.67 / 0.67 | 0.50 / 0.33 |" in table and "`j`: 0.50" in table


def test_bundled_dev_set_is_built_from_the_written_pairs() -> None:
    pairs = bundled_dev_pairs()
    dev = load_dev_set("builtin:dev")
    assert dev.to_list() == build_bundled_dev_set().to_list()
    # The written pairs and their output-side corruptions (test_dev_set checks the instruction-side and real kinds).
    assert len(pairs) == 20
    assert {kind: dev["kind"].count(kind) for kind in (GOOD, *CORRUPTIONS)} == dict.fromkeys((GOOD, *CORRUPTIONS), 20)
    outputs = {pair["id"]: pair["output"] for pair in pairs}
    for row in dev:
        if row["kind"] not in (GOOD, *CORRUPTIONS):
            continue
        own = outputs[row["pair_id"]]
        if row["kind"] == "mismatched":
            assert row["output"] != own and row["output"] in outputs.values()
        elif row["kind"] == "truncated":
            assert own.startswith(row["output"]) and len(row["output"]) < 0.45 * len(own)
        elif row["kind"] == "navigation":
            assert own in row["output"] and len(row["output"]) > len(own) + 100
    seed = {json.loads(line)["instruction"] for line in builtin_path("seed").read_text().splitlines()}
    assert not seed & {pair["instruction"] for pair in pairs}


def test_bundled_eval_set_is_disjoint_from_seed_and_dev() -> None:
    rows = [json.loads(line) for line in builtin_path("eval").read_text().splitlines()]
    instructions = [row["instruction"] for row in rows]
    seed = {json.loads(line)["instruction"] for line in builtin_path("seed").read_text().splitlines()}
    assert len(set(instructions)) == len(instructions) >= 60
    assert not set(instructions) & (seed | {pair["instruction"] for pair in bundled_dev_pairs()})


def test_truncate_cuts_at_a_space() -> None:
    assert truncate("one two three four five six seven eight nine ten") == "one two three four"


def test_load_dev_set_errors_name_the_problem(tmp_path) -> None:
    no_label = tmp_path / "a.jsonl"
    no_label.write_text('{"instruction": "q", "output": "a"}\n')
    with pytest.raises(KeyError, match=r"\['label'\]"):
        load_dev_set(str(no_label))
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"instruction": "q", "output": "a", "label": 1}\n{"instruction": "q", "output": "b", "label": 2}\n')
    with pytest.raises(ValueError, match="row 1: label must be 0 or 1"):
        load_dev_set(str(bad))
    one_class = tmp_path / "c.jsonl"
    one_class.write_text('{"instruction": "q", "output": "a", "label": 1}\n')
    with pytest.raises(ValueError, match="both labels"):
        load_dev_set(str(one_class))


def test_dev_set_without_kind_labels_rows_good_or_bad(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    rows = [{"instruction": "q", "output": "a", "label": 1}, {"instruction": "q", "output": "b", "label": 0}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dev = load_dev_set(str(path))
    assert dev["kind"] == [GOOD, "bad"] and dev["pair_id"] == [f"{path}:0", f"{path}:1"]


def message(message_id, parent_id, role, text, rank=None, lang="en", deleted=False, **extra):
    return {"message_id": message_id, "parent_id": parent_id, "role": role, "text": text, "rank": rank,
            "lang": lang, "deleted": deleted, **extra}  # fmt: skip


def oasst_export() -> list[dict]:
    return [
        message("r1", None, "prompter", "Explain tides."),
        message("a1", "r1", "assistant", "best tide answer", rank=0),
        message("a2", "r1", "assistant", "middle tide answer", rank=1),
        message("a3", "r1", "assistant", "worst tide answer", rank=2),
        message("a4", "r1", "assistant", "deleted tide answer", rank=3, deleted=True),
        message("p2", "a1", "prompter", "And the moon?"),  # a second turn: not a first-turn prompt
        message("a5", "p2", "assistant", "moon rank 0", rank=0),
        message("a6", "p2", "assistant", "moon rank 1", rank=1),
        message("r2", None, "prompter", "Only one reply."),
        message("b1", "r2", "assistant", "lonely reply", rank=0),
        message("r3", None, "prompter", "Erkläre Ebbe.", lang="de"),
        message("c1", "r3", "assistant", "gut", rank=0, lang="de"),
        message("c2", "r3", "assistant", "schlecht", rank=1, lang="de"),
        message("r4", None, "prompter", "Name a colour."),
        message("d1", "r4", "assistant", "Blue.", rank=1),
        message("d2", "r4", "assistant", "Red, a warm colour.", rank=0),
        message("d3", "r4", "assistant", "unranked", rank=None),
    ]


def test_oasst_dev_set_pairs_rank0_with_the_lowest_ranked_reply() -> None:
    dev = oasst_dev_set(oasst_export())
    assert dev.to_list() == [
        {"instruction": "Explain tides.", "output": "best tide answer", "label": 1, "kind": GOOD,
         "pair_id": "oasst1:r1/a1"},
        {"instruction": "Explain tides.", "output": "worst tide answer", "label": 0, "kind": OASST_KIND,
         "pair_id": "oasst1:r1/a3"},
        {"instruction": "Name a colour.", "output": "Red, a warm colour.", "label": 1, "kind": GOOD,
         "pair_id": "oasst1:r4/d2"},
        {"instruction": "Name a colour.", "output": "Blue.", "label": 0, "kind": OASST_KIND,
         "pair_id": "oasst1:r4/d1"},
    ]  # fmt: skip
    assert oasst_dev_set(oasst_export(), exclude_roots=["r1"])["pair_id"] == ["oasst1:r4/d2", "oasst1:r4/d1"]
    assert oasst_dev_set(oasst_export(), limit=1)["pair_id"] == ["oasst1:r1/a1", "oasst1:r1/a3"]
    german = oasst_dev_set(oasst_export(), lang="de")
    assert german["output"] == ["gut", "schlecht"]


def test_oasst_dev_set_names_a_missing_field() -> None:
    rows = oasst_export()
    del rows[2]["rank"]
    with pytest.raises(KeyError, match=r"row 2 lacks field\(s\) \['rank'\]"):
        oasst_dev_set(rows)


def test_oasst_dev_set_reads_an_export_file(tmp_path) -> None:
    path = tmp_path / "export.jsonl"
    Dataset.from_list(oasst_export()).to_json(str(path), lines=True)
    assert len(load_oasst_dev_set(str(path))) == 4


def test_calibrate_command_writes_calibration_json(tmp_path, tiny_model_dir) -> None:
    from humpback_trl.scripts import calibrate

    dev = tmp_path / "dev.jsonl"
    rows = [
        {"instruction": "Explain tides.", "output": "The moon's gravity pulls the oceans.", "label": 1, "kind": GOOD},
        {"instruction": "Explain tides.", "output": "Home > Blog > Tides | Subscribe!", "label": 0, "kind": "nav"},
        {"instruction": "Name a colour.", "output": "Blue.", "label": 1, "kind": GOOD},
        {"instruction": "Name a colour.", "output": "I love my blog.", "label": 0, "kind": "blog"},
    ]
    dev.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "cal"
    argv = ["--scorer", str(tiny_model_dir), "--dev", str(dev), "--output_dir", str(out), "--min_score_mass", "0"]
    report = calibrate.run([*argv, "--prompt_styles", "verbatim", "score-only"])
    written = json.loads((out / "calibration.json").read_text())
    assert written == report
    names = [s["scorer"] for s in written["scorers"]]
    assert names == [f"{tiny_model_dir} [verbatim]", f"{tiny_model_dir} [score-only]"]
    assert written["scorer"] == f"{tiny_model_dir} [verbatim]" and written["dev_set"] == str(dev)
    assert set(written["auc_by_kind"]) == {"nav", "blog"} and set(written["precision"]) == {"a4", "a5"}
    assert 0 <= written["auc"] <= 1 and set(written["recall"]) == {"a4", "a5"}
    scores = [json.loads(line)["scores"] for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 4 and all(len(row) == 2 for row in scores)
    assert "| scorer | AUC |" in (out / "calibration.md").read_text()


# ---- the calibrate command and the curate stage against an independent count -----------------------------------


def pair_auc(scores, labels, rows) -> float | None:
    """ROC AUC by brute force over every (good, bad) pair among `rows`: a win 1, a tie 1/2; a missing score ranks
    below every score."""
    rank = [float("-inf") if s is None else s for s in scores]
    good = [i for i in rows if labels[i] == 1]
    bad = [i for i in rows if labels[i] == 0]
    if not good or not bad:
        return None
    wins = sum((rank[g] > rank[b]) + 0.5 * (rank[g] == rank[b]) for g in good for b in bad)
    return wins / (len(good) * len(bad))


def expected_metrics(scores, masses, labels, kinds, thresholds, floor) -> dict:
    everything = range(len(labels))
    by_kind = {
        kind: pair_auc(scores, labels, [i for i in everything if kinds[i] in (kind, GOOD)])
        for kind in sorted(set(kinds) - {GOOD})
    }
    precision, recall = {}, {}
    for name, threshold in thresholds.items():
        chosen = [i for i in everything if scores[i] is not None and scores[i] >= threshold and masses[i] >= floor]
        hits = sum(labels[i] for i in chosen)
        precision[name] = hits / len(chosen) if chosen else None
        recall[name] = hits / sum(labels)
    return {"auc": pair_auc(scores, labels, everything), "auc_by_kind": by_kind, "precision": precision,
            "recall": recall}  # fmt: skip


def assert_metrics(metrics: dict, expected: dict) -> None:
    """The report rounds to 4 digits."""
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=6e-5), key


LABELLED = [
    ("Explain tides.", "The moon's gravity pulls the oceans toward it.", 1, GOOD),
    ("Explain tides.", "Home > Blog > Tides | Subscribe!", 0, "navigation"),
    ("Name a colour.", "Blue.", 1, GOOD),
    ("Name a colour.", "I love my blog, read it every day.", 0, "blog"),
    ("Give a tip for sleep.", "Keep a regular bedtime.", 1, GOOD),
    ("Give a tip for sleep.", "Keep a", 0, "truncated"),
    ("What is 2 plus 2?", "4.", 1, GOOD),
    ("What is 2 plus 2?", "Paris is the capital of France.", 0, "mismatched"),
]


@pytest.fixture(scope="module")
def second_model_dir(tmp_path_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("tiny-model-1")
    tiny_tokenizer.save_pretrained(path)
    build_model(tiny_tokenizer, seed=1).save_pretrained(path)
    return path


def test_calibrate_command_matches_an_independent_count_per_scorer_kind_and_mass_floor(
    tmp_path, tiny_model_dir, second_model_dir
):
    from humpback_trl.scripts import calibrate

    dev = tmp_path / "dev.jsonl"
    fields = ["instruction", "output", "label", "kind"]
    dev.write_text("".join(json.dumps(dict(zip(fields, row, strict=True))) + "\n" for row in LABELLED))
    scorers = [str(tiny_model_dir), str(second_model_dir)]
    base = ["--scorer", *scorers, "--dev", str(dev), "--curation_mode", "logits"]
    calibrate.run([*base, "--output_dir", str(tmp_path / "probe"), "--min_score_mass", "0"])
    probe = [json.loads(line) for line in (tmp_path / "probe" / "scores.jsonl").read_text().splitlines()]
    # Thresholds and a mass floor between the first scorer's own values, so each selects some rows and not others.
    first_scores = sorted(row["scores"][scorers[0]] for row in probe)
    first_masses = sorted(row["masses"][scorers[0]] for row in probe)
    thresholds = {"a4": (first_scores[1] + first_scores[2]) / 2, "a5": (first_scores[4] + first_scores[5]) / 2}
    floor = (first_masses[1] + first_masses[2]) / 2
    options = ["--a4_threshold", str(thresholds["a4"]), "--a5_threshold", str(thresholds["a5"]),
               "--min_score_mass", str(floor)]  # fmt: skip
    report = calibrate.run([*base, *options, "--output_dir", str(tmp_path / "cal")])

    written = [json.loads(line) for line in (tmp_path / "cal" / "scores.jsonl").read_text().splitlines()]
    assert [(row["instruction"], row["output"], row["label"], row["kind"]) for row in written] == LABELLED
    labels, kinds = [row[2] for row in LABELLED], [row[3] for row in LABELLED]
    assert [metrics["scorer"] for metrics in report["scorers"]] == scorers
    for name, metrics in zip(scorers, report["scorers"], strict=True):
        scores = [row["scores"][name] for row in written]
        masses = [row["masses"][name] for row in written]
        assert (metrics["pairs"], metrics["good"]) == (8, 4)
        assert_metrics(metrics, expected_metrics(scores, masses, labels, kinds, thresholds, floor))
    assert report["auc"] == report["scorers"][0]["auc"] and report["dev_set"] == str(dev)
    # The floor decides which rows count here: without it the first scorer's A4 would select other rows.
    first = [[row[column][scorers[0]] for row in written] for column in ("scores", "masses")]
    assert expected_metrics(*first, labels, kinds, thresholds, 0.0) != expected_metrics(
        *first, labels, kinds, thresholds, floor
    )


def test_calibrate_builds_an_oasst_dev_set_and_saves_it(tmp_path, tiny_model_dir):
    from humpback_trl.scripts import calibrate

    export = tmp_path / "export.jsonl"
    Dataset.from_list(oasst_export()).to_json(str(export), lines=True)
    saved = tmp_path / "dev.jsonl"
    options = ["--dev", str(export), "--dev_format", "oasst", "--save_dev", str(saved), "--min_score_mass", "0"]
    report = calibrate.run(["--scorer", str(tiny_model_dir), *options, "--output_dir", str(tmp_path / "cal")])
    expected = oasst_dev_set(oasst_export()).to_list()
    assert [json.loads(line) for line in saved.read_text().splitlines()] == expected
    written = [json.loads(line) for line in (tmp_path / "cal" / "scores.jsonl").read_text().splitlines()]
    assert [row["pair_id"] for row in written] == [row["pair_id"] for row in expected]
    scores = [row["scores"][str(tiny_model_dir)] for row in written]
    assert report["auc_by_kind"] == {OASST_KIND: pytest.approx(pair_auc(scores, [1, 0, 1, 0], range(4)), abs=6e-5)}


@pytest.mark.slow  # the bundled dev set is scored twice, by the stage and by the command
def test_the_curate_stage_calibrates_on_the_bundled_dev_set_by_default(tmp_path, tiny_model_dir):
    """The curate stage's calibration block (default dev set) is what `humpback calibrate` measures for the same
    scorer and settings: two paths, one result."""
    from humpback_trl.scripts import calibrate, curate

    candidates = tmp_path / "candidates.jsonl"
    candidates.write_text(json.dumps({"instruction": "Explain tides.", "output": "The moon pulls the oceans.",
                                      "source": "augmented", "source_id": "c0"}) + "\n")  # fmt: skip
    settings = ["--min_score_mass", "0", "--a4_threshold", "3.1", "--a5_threshold", "3.2"]
    curate.run(["--candidates", str(candidates), "--model_name_or_path", str(tiny_model_dir), "--output_dir",
                str(tmp_path / "cur"), *settings])  # fmt: skip
    block = json.loads((tmp_path / "cur" / "report.json").read_text())["iterations"][0]["calibration"]
    dev = load_dev_set(BUNDLED_DEV_SET)
    assert block["dev_set"] == BUNDLED_DEV_SET
    [metrics] = block["scorers"]
    assert (metrics["pairs"], metrics["good"]) == (len(dev), sum(dev["label"]))
    assert set(metrics["auc_by_kind"]) == set(dev["kind"]) - {GOOD}
    measured = calibrate.run(["--scorer", str(tiny_model_dir), *settings])
    for key in ("auc", "auc_by_kind", "precision", "recall", "passed_by_kind"):
        assert metrics[key] == measured[key], key


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--scorer", "org/m", "--engine", "tpu"], "engine must be one of .*, got 'tpu'"),
        (["--scorer", "org/m", "--engine", "vllm"], "engine vllm applies to --judge; --scorer runs on --curation_en"),
        (["--judge", "org/m", "--curation_engine", "transformers"], "curation_engine transformers applies to --sc"),
        (["--scorer", "ADAPTER", "--curation_mode", "logits", "likelihood", "--curation_engine", "vllm"],
         "curation_engine vllm: likelihood mode with a LoRA adapter fails"),
        (["--judge", "ADAPTER", "--judge_method", "likelihood", "--engine", "vllm"],
         "engine vllm: likelihood mode with a LoRA adapter fails"),
    ],
)  # fmt: skip
def test_calibrate_engine_options_fail_in_one_line_naming_the_option(arguments, message, tmp_path, tiny_model_dir):
    """--scorer scores on curation_engine, --judge on engine; vLLM's likelihood with an adapter is refused before any
    model loads."""
    from humpback_trl.scripts import calibrate

    adapter = random_lora_adapter(tiny_model_dir, tmp_path / "m1") if "ADAPTER" in arguments else ""
    with pytest.raises(UserError, match=f"^{message}") as error:
        calibrate.run([adapter if argument == "ADAPTER" else argument for argument in arguments])
    assert "\n" not in str(error.value)
