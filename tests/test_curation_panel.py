"""Curation beyond the paper: the digit-mass floor, the panel of judges and the calibration block."""

import json

import pytest
from conftest import TEXTS
from datasets import Dataset

from humpback_trl.curation import CurationSettings, curate, panel_score, select
from humpback_trl.pairs import PAIR_FEATURES, make_pair
from humpback_trl.paths import public_name
from humpback_trl.scoring import RUBRIC
from humpback_trl.tiny import build_model, build_tokenizer

CANDIDATES = [
    ("Explain how photosynthesis works.", "Light, water and carbon dioxide become sugar and oxygen."),
    ("Write a poem about the sea.", "The wind and a small boat coming home at night."),
    ("How do I bake bread?", "Mix flour, water, salt and yeast, knead, let it rise, then bake."),
    ("What is the capital of France?", "Paris is the capital and largest city of France."),
    ("List Python collections.", "Lists are mutable; tuples are immutable; sets hold unique items."),
]


@pytest.fixture()
def candidates() -> Dataset:
    rows = [make_pair(i, o, "augmented", f"doc-{n}") for n, (i, o) in enumerate(CANDIDATES)]
    return Dataset.from_list(rows, features=PAIR_FEATURES)


@pytest.fixture()
def dev_file(tmp_path):
    rows = [
        {"instruction": i, "output": o, "label": int(n % 2 == 0), "kind": "good" if n % 2 == 0 else "mismatched"}
        for n, (i, o) in enumerate(CANDIDATES)
    ]
    path = tmp_path / "dev.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def rubric_tokenizer():
    """Trained on the rubric too, so curation prompts are short and the tests fast."""
    return build_tokenizer(TEXTS + [RUBRIC], vocab_size=1000)


@pytest.fixture()
def rubric_model(rubric_tokenizer):
    return build_model(rubric_tokenizer, seed=0)


def saved_model(path, tokenizer, seed: int):
    tokenizer.save_pretrained(path)
    build_model(tokenizer, seed=seed).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def judge_dirs(tmp_path_factory, rubric_tokenizer):
    """The fixture model's own weights (seed 0) and another model (seed 1), as folders."""
    return [saved_model(tmp_path_factory.mktemp(f"judge-{seed}"), rubric_tokenizer, seed) for seed in (0, 1)]


def test_settings_defaults_and_errors() -> None:
    settings = CurationSettings()
    assert (settings.curation_prompt, settings.min_score_mass, settings.curation_panel) == ("verbatim", 0.5, "mean")
    assert settings.calibration_dev_set == "builtin:dev" and settings.curation_judges == []
    assert CurationSettings(calibration_dev_set="none").calibration_dev_set is None
    assert CurationSettings(curation_mode="generate").mass_floor == 0.0
    for bad, match in (
        ({"curation_prompt": "short"}, "curation_prompt must be one of"),
        ({"curation_panel": "median"}, "curation_panel must be one of"),
        ({"min_score_mass": 1.5}, r"min_score_mass must be within \[0, 1\]"),
    ):
        with pytest.raises(ValueError, match=match):
            CurationSettings(**bad)


def test_selection_leaves_out_low_digit_mass() -> None:
    settings = CurationSettings(min_score_mass=0.5, calibration_dev_set=None)
    scores, masses = [4.8, 4.8, 4.8, 3.0, None], [0.9, 0.001, None, 0.9, None]
    floor = select(scores, [settings.enough_mass(m) for m in masses], settings.rules)
    assert floor.indices == {"a4": [0, 2], "a5": [0, 2]}
    assert select(scores, [True] * 5, settings.rules).indices == {"a4": [0, 1, 2], "a5": [0, 1, 2]}


@pytest.mark.parametrize(("panel", "expected"), [("mean", 3.0), ("min", 2.0)])
def test_panel_score(panel: str, expected: float) -> None:
    assert panel_score([2.0, 4.0, None], panel) == expected
    assert panel_score([None, None], panel) is None


def test_min_score_mass_counts_low_mass_in_the_funnel(tmp_path, rubric_tokenizer, rubric_model, candidates) -> None:
    settings = CurationSettings(a4_threshold=1.0, a5_threshold=1.0, min_score_mass=0.0, calibration_dev_set=None)
    _, open_summary = curate(
        rubric_model, rubric_tokenizer, candidates, settings, iteration=1, scorer="m0", output_dir=tmp_path / "open"
    )
    assert (open_summary["a5"], open_summary["low_mass"]) == (5, 0)
    strict = CurationSettings(a4_threshold=1.0, a5_threshold=1.0, min_score_mass=1.0, calibration_dev_set=None)
    curated, summary = curate(
        rubric_model, rubric_tokenizer, candidates, strict, iteration=1, scorer="m0", output_dir=tmp_path / "strict"
    )
    # Every score is in [1, 5] but no model puts all its probability on five tokens: all pairs are low_mass.
    assert (summary["a4"], summary["a5"], summary["low_mass"], len(curated["scored"])) == (0, 0, 5, 5)
    assert "low_mass (digit mass < 1.0)**: 5" in (tmp_path / "strict" / "README.md").read_text()


def test_panel_of_judges_keeps_every_score_and_reports_agreement(
    tmp_path, rubric_tokenizer, rubric_model, judge_dirs, candidates, dev_file
) -> None:
    same, other = (str(path) for path in judge_dirs)
    settings = CurationSettings(
        min_score_mass=0.0,
        curation_judges=[same, other],
        curation_panel="min",
        calibration_dev_set=str(dev_file),
    )
    curated, summary = curate(
        rubric_model, rubric_tokenizer, candidates, settings, iteration=1, scorer="m0", output_dir=tmp_path / "cur"
    )
    scored = curated["scored"]
    for row in scored:
        judges = row["judge_scores"]
        assert [j["judge"] for j in judges] == ["m0", public_name(same), public_name(other)]
        # The fixture model and the saved one are the same weights: their scores agree.
        assert judges[0]["score"] == pytest.approx(judges[1]["score"], abs=1e-5)
        scores = [j["score"] for j in judges]
        assert row["score"] == pytest.approx(min(scores))
        assert row["score_mass"] == pytest.approx(min(j["mass"] for j in judges))
    assert summary["judges"] == ["m0", public_name(same), public_name(other)]
    calibration = summary["calibration"]
    assert [s["scorer"] for s in calibration["scorers"]] == [
        "m0", public_name(same), public_name(other), "panel (min)"
    ]  # fmt: skip
    for metrics in calibration["scorers"]:
        assert (metrics["pairs"], metrics["good"], set(metrics["auc_by_kind"])) == (5, 3, {"mismatched"})
    assert calibration["agreement"][public_name(same)] == pytest.approx(1.0)
    assert -1 <= calibration["agreement"][public_name(other)] <= 1
    report = json.loads((tmp_path / "cur" / "report.json").read_text())["iterations"][0]
    assert report["calibration"] == calibration
    assert (tmp_path / "cur" / "scoring-judge-2" / "data.jsonl").is_file()


def test_calibration_block_uses_the_prompt_and_mass_rule(
    tmp_path, rubric_tokenizer, rubric_model, candidates, dev_file
) -> None:
    settings = CurationSettings(min_score_mass=1.0, a4_threshold=1.0, calibration_dev_set=str(dev_file))
    _, summary = curate(
        rubric_model, rubric_tokenizer, candidates, settings, iteration=1, scorer="m0", output_dir=tmp_path / "c"
    )
    (metrics,) = summary["calibration"]["scorers"]
    # No row has enough digit mass, so the filters select nothing: precision undefined, recall 0.
    assert metrics["precision"] == {"a4": None, "a5": None} and metrics["recall"] == {"a4": 0.0, "a5": 0.0}
    assert metrics["auc"] is not None and summary["prompt"] == "verbatim"
