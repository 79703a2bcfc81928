"""The data-quality ablation: the random sample (A5's size, no A5 pair forced in or out), the verdict line, the
loop's stages and eval judge, and `humpback run recipes/quickstart/ --model builtin:tiny-llama --ablation random`."""

import json
import random
from pathlib import Path

import pytest
from datasets import Dataset
from loop_runs import copy_of_run, finish, humpback_run, statuses

from humpback_trl import pipeline
from humpback_trl.ablation import ABLATION_SEED, ablation_splits, ablation_verdict, passed_indices, random_sample
from humpback_trl.scripts import run as run_script

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart"


def scored_pool() -> Dataset:
    """20 pairs: rows 3 and 7 rejected by an instruction check (no score), row 11 unscored (generate mode)."""
    scores = [None if i in (3, 7, 11) else float(i % 5) + 1 for i in range(20)]
    checks = ["too_short" if i in (3, 7) else None for i in range(20)]
    return Dataset.from_dict(
        {"source_id": [f"s{i}" for i in range(20)], "instruction": [f"q{i}" for i in range(20)],
         "output": [f"a{i}" for i in range(20)], "score": scores, "check": checks}
    )  # fmt: skip


def test_random_sample_has_a5_size_and_ignores_a5() -> None:
    scored = scored_pool()
    passed = passed_indices(list(scored["score"]), list(scored["check"]))
    assert passed == [i for i in range(20) if i not in (3, 7, 11)]
    top = sorted(passed, key=lambda i: -scored[i]["score"])[:4]  # an A5 of 4: the best scored
    splits = ablation_splits(scored, len(top))
    assert len(splits["random"]) == len(top) == 4
    assert splits["passed"]["source_id"] == [f"s{i}" for i in passed]
    # The sample is a plain draw from the pool A5 came from: which rows are in A5 plays no part, so none is forced
    # in or out; and it is fixed by the seed.
    expected = sorted(random.Random(ABLATION_SEED).sample(passed, 4))
    assert splits["random"]["source_id"] == [f"s{i}" for i in expected]
    assert random_sample(passed, 4) == expected and random_sample(passed, 4, seed=1) != expected
    assert set(expected) != set(top)
    # Over many seeds each passed row is drawn about equally often, A5 rows included (4 of 17 each time).
    draws = [i for seed in range(2000) for i in random_sample(passed, 4, seed)]
    shares = {i: draws.count(i) / 2000 for i in passed}
    assert all(abs(share - 4 / 17) < 0.05 for share in shares.values())
    assert ablation_splits(scored, 0)["random"].num_rows == 0
    with pytest.raises(ValueError, match="A random sample of 18 needs at least 18 candidates, got 17"):
        random_sample(passed, 18)
    # A pool without a check column (scored before the checks existed): every scored row passed.
    assert passed_indices([1.0, None, 2.0]) == [0, 2]


def evaluation_report(preference, low, high, undecided=False, flipped=False):
    pair = {"model_a": "M1", "model_b": "M1-random", "preference": preference, "ci_low": low, "ci_high": high, "n": 16}
    if flipped:
        pair = {**pair, "model_a": "M1-random", "model_b": "M1", "preference": 1 - preference, "ci_low": 1 - high,
                "ci_high": 1 - low}  # fmt: skip
    calibration = {"pairwise_accuracy": 0.5 if undecided else 0.9, "undecided": undecided}
    return {
        "judge": "base",
        "headline_method": "likelihood",
        "methods": {"likelihood": {"calibration": calibration, "pairs": [pair]}},
    }


@pytest.mark.parametrize("flipped", [False, True])
def test_the_verdict_line(flipped) -> None:
    beat = ablation_verdict(evaluation_report(0.7, 0.6, 0.8, flipped=flipped), "M1", "M1-random", "random")
    assert beat["line"].startswith("Curation beat random selection: M1 preferred over M1-random 0.70 (95% CI 0.60-0.80")
    assert (beat["preference"], beat["ci_low"], beat["ci_high"], beat["judge_accuracy"]) == (0.7, 0.6, 0.8, 0.9)
    lost = ablation_verdict(evaluation_report(0.3, 0.2, 0.4, flipped=flipped), "M1", "M1-random", "random")
    assert lost["line"].startswith("Curation lost to random selection")
    spans = ablation_verdict(evaluation_report(0.55, 0.45, 0.65, flipped=flipped), "M1", "M1-random", "random")
    assert spans["line"].startswith("Curation did not beat random selection (the interval holds 0.5)")
    undecided = ablation_verdict(evaluation_report(0.9, 0.8, 1.0, True, flipped), "M1", "M1-random", "random")
    assert undecided["line"].startswith("Undecided whether curation beat random selection: the judge is at chance")
    every = ablation_verdict(evaluation_report(0.7, 0.6, 0.8), "M1", "M1-random", "all")
    assert every["line"].startswith("Curation beat training on every candidate")


def loop_arguments(**changes):
    (loop,) = run_script.make_parser().parse_args_and_config(["--config", str(QUICKSTART / "loop.yaml")])
    return pipeline.LoopArguments(**{**vars(loop), **changes})


def test_a_loop_without_the_comparison_says_why() -> None:
    assert pipeline.not_compared_line(loop_arguments(ablation="none")).startswith(
        "not measured (ablation: none in loop.yaml)"
    )
    assert pipeline.not_compared_line(loop_arguments(ablation="random", evaluate=False)).startswith(
        "not measured (evaluate: false in loop.yaml)"
    )


@pytest.mark.parametrize("iterations", [1, 2])
def test_the_ablation_stage_and_the_eval_judge(tmp_path, iterations) -> None:
    out = tmp_path / "out"
    stages = pipeline.plan(QUICKSTART, loop_arguments(output_dir=str(out), ablation="random", iterations=iterations))
    names = [stage.name for stage in stages]
    # Trained just before M_K, on the seed and curate-1's random sample, with M1's recipe and iteration.
    assert names[names.index("m1-random") + 1] == f"m{iterations}"
    stage = stages[names.index("m1-random")]
    assert stage.recipe == QUICKSTART / "seed.yaml" and stage.upstream == ["curate-1"] and stage.evaluated
    values = pipeline.override_values(stage.overrides)
    assert values["data"] == ["builtin:seed", str(out / "curate-1" / "random.jsonl")]
    assert (values["iteration"], values["stage"], values["output_dir"]) == ("1", "m1-random", str(out / "m1-random"))
    evaluated = pipeline.override_values(stages[-1].overrides)
    assert "M1-random" in evaluated["model_names"] and str(out / "m1-random") in evaluated["models"]
    # The judge is the run's base model, never one of the compared adapters.
    assert evaluated["judge"] == "builtin:smollm2-135m-instruct"
    assert evaluated["judge"] not in evaluated["models"]
    every = pipeline.plan(QUICKSTART, loop_arguments(output_dir=str(out), ablation="all"))
    (all_stage,) = [s for s in every if s.name == "m1-all"]
    assert pipeline.override_values(all_stage.overrides)["data"][-1] == str(out / "curate-1" / "passed.jsonl")
    plain = [s.name for s in pipeline.plan(QUICKSTART, loop_arguments(output_dir=str(out)))]
    assert not any(name.startswith("m1-") for name in plain)
    judged = pipeline.plan(QUICKSTART, loop_arguments(output_dir=str(out), judge_model="org/judge", model="org/base"))
    assert pipeline.override_values(judged[-1].overrides)["judge"] == "org/judge"
    with pytest.raises(ValueError, match="ablation must be one of"):
        loop_arguments(ablation="half")


def test_quickstart_with_a_random_ablation_on_the_tiny_model(loop_recipes, first_run, tmp_path) -> None:
    """`humpback run recipes/quickstart/ --model builtin:tiny-llama --ablation random --iterations 1`, shortened
    (tests/loop_runs.py), on a copy of the shared loop's folder: its stages up to M1 are up to date, so M1-random and
    the eval run."""
    out = copy_of_run(first_run[0], tmp_path / "out")
    output = finish(
        humpback_run(loop_recipes, out, "--model", "builtin:tiny-llama", "--ablation", "random", "--iterations", "1",
                     "--preference", "none")
    )  # fmt: skip
    assert statuses(output) == {
        **dict.fromkeys(["corpus", "myx", "augment", "magpie", "m0", "curate-1", "m1"], "up to date"),
        **dict.fromkeys(["m1-random", "eval"], "running"),
    }
    assert "[humpback] m1-random: running" in output
    a5 = (out / "curate-1" / "a5.jsonl").read_text().splitlines()
    sample = [json.loads(line) for line in (out / "curate-1" / "random.jsonl").read_text().splitlines()]
    assert len(sample) == len(a5)
    trained = [json.loads(line) for line in (out / "m1-random" / "training_data.jsonl").read_text().splitlines()]
    assert len(trained) == len((out / "m1" / "training_data.jsonl").read_text().splitlines()) == 181 + len(a5)
    assert (out / "m1-random" / "adapter_model.safetensors").is_file()
    report = json.loads((out / "report.json").read_text())
    evaluation = report["evaluation"]
    assert [row["model"] for row in evaluation["table"]] == ["M1-random", "M1"]
    assert evaluation["judge"] == "builtin:tiny-llama" and evaluation["judge_is_compared"] is None
    assert report["ablation"]["curated"] == "M1" and report["ablation"]["baseline"] == "M1-random"
    line = report["curation vs random selection"]
    assert line == report["ablation"]["line"] and "M1 preferred over M1-random" in line
    # The tiny random model cannot tell answers apart: the report says so rather than declaring a winner.
    assert line.startswith("Undecided") == evaluation["judge_undecided"]
    markdown = (out / "report.md").read_text()
    assert line in markdown and "Judge calibration of `builtin:tiny-llama`" in markdown
