"""Report pieces: the fine score histogram, the top-scored pairs, the Markdown sections and the thresholds plot."""

from datasets import Dataset

from humpback_trl.reports import curation_summary, render_markdown, score_histogram, top_pairs, write_report


def scored_pool(scores):
    return Dataset.from_dict(
        {
            "instruction": [f"question {i}" for i in range(len(scores))],
            "output": [f"answer {i} | with a pipe\nand a newline " + "x" * 400 for i in range(len(scores))],
            "score": scores,
        }
    )


def test_histogram_bins_quarter_points_and_puts_five_in_the_last_bin():
    histogram = score_histogram([1.0, 1.24, 1.25, 3.99, 4.0, 4.5, 4.74, 5.0, None])
    assert histogram["edges"][:3] == [1.0, 1.25, 1.5] and histogram["edges"][-1] == 5.0
    counts = histogram["counts"]
    assert len(counts) == 16 and sum(counts) == 8
    # Bins [1, 1.25), [1.25, 1.5), ..., [3.75, 4), [4, 4.25).
    assert counts[0] == 2 and counts[1] == 1 and counts[11] == 1 and counts[12] == 1
    assert counts[14] == 2 and counts[15] == 1  # 4.5 and 4.74 in [4.5, 4.75); 5.0 in [4.75, 5]


def test_top_pairs_rank_by_score_skip_unscored_and_mark_a5():
    pool = scored_pool([3.0, None, 4.8, 4.2, 4.6])
    top = top_pairs(pool, pool.select([2, 4]))
    assert [(p["instruction"], p["score"], p["a5"]) for p in top] == [
        ("question 2", 4.8, True),
        ("question 4", 4.6, True),
        ("question 3", 4.2, False),
    ]
    assert len(top[0]["output"]) == 300


def test_markdown_has_every_section_and_table_cells_stay_on_one_line(tmp_path):
    pool = scored_pool([4.8, 2.0, 4.1])
    a4, a5 = pool.select([0, 2]), pool.select([0])
    summary = curation_summary(
        pool, a4, a5, iteration=1, scorer="out/m0", mode="logits", thresholds={"a4": 4.0, "a5": 4.5}
    )
    report = {
        "seed": 181,
        "corpus_funnel": {"documents_read": 79, "removed_too_long": 62, "segments_kept": 66},
        "backward_model": {
            "segments": 3,
            "instructions": 3,
            "questions (end with ?)": 2,
            "instruction_chars": {"mean": 40.0, "std": 2.0},
            "instruction_words": {"mean": 8.0, "std": 1.0},
            "examples": [{"segment": "Lists | tuples", "instruction": "What is a list?"}],
        },
        "iterations": [summary],
        "stage_seconds": {"corpus": 12.0, "myx": 100.4, "m0": None},
    }
    paths = write_report(report, tmp_path, "Humpback data funnel")
    markdown = (tmp_path / "report.md").read_text()
    assert "| removed_too_long | 62 |" in markdown
    assert "3 instructions for 3 segments (2 end with a question mark)" in markdown
    assert "| Lists \\| tuples | What is a list? |" in markdown
    assert "| 4.8 | yes | question 0 | answer 0 \\| with a pipe and a newline xxx" in markdown
    assert "| myx | 100 |" in markdown and "| m0 | - |" in markdown and "| total | 112 |" in markdown
    assert markdown == render_markdown(report, "Humpback data funnel")
    assert [p.name for p in paths] == ["report.json", "report.md", "scores.png"] and paths[2].stat().st_size > 1000


def test_funnel_shows_low_mass_calibration_preferences_and_the_evaluation_table():
    pool = scored_pool([4.8, 2.0, 4.1, 4.9])
    summary = curation_summary(
        pool, pool.select([0, 2]), pool.select([0]), iteration=1, scorer="m0", mode="logits",
        thresholds={"a4": 4.0, "a5": 4.5},
    )  # fmt: skip
    metrics = {"scorer": "m0", "pairs": 10, "good": 2, "auc": 0.75, "auc_by_kind": {"blog": 0.5},
               "precision": {"a4": 0.5, "a5": None}, "recall": {"a4": 1.0, "a5": 0.0}}  # fmt: skip
    summary |= {"min_score_mass": 0.5, "low_mass": 1, "calibration": {"dev_set": "builtin:dev", "scorers": [metrics]}}
    row = {"model": "M1", "reference": "M0", "wins": 3, "ties": 1, "losses": 0, "n": 4, "preference": 0.875,
           "ci_low": 0.625, "ci_high": 1.0, "position_consistency": None, "mean_length": 120.4,
           "reference_mean_length": 80.0}  # fmt: skip
    calibration = {"method": "likelihood", "judge": "base", "pairwise_dev": "builtin:pairwise_dev", "pairs": 100,
                   "pairwise_accuracy": 0.93, "accuracy_by_kind": {"blog": 0.9}, "decided": 1.0,
                   "min_accuracy": 0.6, "undecided": False}  # fmt: skip
    evaluation = {"instructions": "builtin:eval", "instructions_count": 4, "judge": "base", "reference": "M0",
                  "judge_is_compared": None, "headline_method": "likelihood", "table": [row],
                  "methods": {"likelihood": {"calibration": calibration, "table": [row], "pairs": []}},
                  "model_outputs": {"M0": "e/M0.json", "M1": "e/M1.json"}}  # fmt: skip
    report = {
        "seed": 3,
        "iterations": [summary],
        "preferences": {"instructions": 8, "pairs": 5, "scorer": "out/m1"},
        "evaluation": evaluation,
    }
    markdown = render_markdown(report)
    assert "Kept out of A4 / A5 for low digit mass (digit mass < 0.5): 1 of 4 pairs." in markdown
    assert (
        "Judge calibration on `builtin:dev` (10 pairs, 2 good):\n\n"
        "| scorer | AUC | AUC blog | A4 P / R | A5 P / R |\n|---|---|---|---|---|\n"
        "| m0 | 0.75 | 0.50 | 0.50 / 1.00 | - / 0.00 |\n"
    ) in markdown
    assert "## Preference data\n\n| measure | value |\n|---|---|\n| instructions | 8 |\n| pairs | 5 |" in markdown
    assert markdown.endswith(
        "## Evaluation\n\n"
        "4 instructions from `builtin:eval`; judge `base`; reference `M0`; headline method: likelihood.\n\n"
        "Judge calibration of `base` on `builtin:pairwise_dev` (100 labelled pairs; undecided below 0.60):\n\n"
        "| method | accuracy | blog | decided | consistency | verdict |\n|---|---|---|---|---|---|\n"
        "| likelihood | 0.93 | 0.90 | 1.00 | - | decides |\n\n"
        "### Judge method: likelihood\n\n"
        "Judge `base` (likelihood): pairwise accuracy 0.93 on `builtin:pairwise_dev` (100 labelled pairs); decides.\n\n"
        "| model | vs | win | tie | loss | preference (95% CI) | consistency | mean length (chars) |\n"
        "|---|---|---|---|---|---|---|---|\n"
        "| M1 | M0 | 3 | 1 | 0 | 0.88 (0.62-1.00) | - | 120 (ref 80) |\n"
    )
    # A report without those keys (written before #10) renders without those lines.
    old = curation_summary(pool, pool, pool, iteration=1, scorer="m0", mode="logits", thresholds=summary["thresholds"])
    plain = render_markdown({"iterations": [old]})
    assert "low digit mass" not in plain and "calibration" not in plain


def test_each_iteration_says_what_its_model_trained_on():
    """Under `rewrite: replace` M_k trains on the rewritten pairs: the report says so instead of "seed + A5"."""
    from humpback_trl.configs import LoopArguments
    from humpback_trl.pipeline import training_data_label

    labels = {
        (magpie, rewrite): training_data_label(LoopArguments(magpie=magpie, rewrite=rewrite))
        for magpie in ("none", "seed")
        for rewrite in ("none", "replace", "add")
    }
    assert labels == {
        ("none", "none"): "seed + A5",
        ("none", "replace"): "seed + rewritten A5",
        ("none", "add"): "seed + A5 + accepted rewrites",
        ("seed", "none"): "seed + MAGPIE + A5",
        ("seed", "replace"): "seed + MAGPIE + rewritten A5",
        ("seed", "add"): "seed + MAGPIE + A5 + accepted rewrites",
    }
    pool = scored_pool([4.8, 2.0])
    summary = curation_summary(
        pool, pool.select([0]), pool.select([0]), iteration=1, scorer="out/m0", mode="logits",
        thresholds={"a4": 4.0, "a5": 4.5},
    )  # fmt: skip
    iteration = {**summary, "trains": "m1", "training_pairs": 182, "training_data": labels[("none", "replace")]}
    markdown = render_markdown({"iterations": [iteration]}, "Humpback data funnel")
    assert "m1 trained on 182 pairs (seed + rewritten A5)" in markdown
