"""Evaluation: outcomes from scripted judgments, bootstrap intervals, the Copeland ranking, the judge default,
AlpacaEval's format, and the tiny-model end to end run with the judge's calibration beside every table."""

import json

import pytest

from humpback_trl import evaluation, judges
from humpback_trl.chat import load_humpback
from humpback_trl.evaluation import (
    EvalArguments,
    alpaca_eval_outputs,
    bootstrap_interval,
    copeland_ranking,
    default_judge,
    load_instructions,
    outcomes,
    resolve_judge,
    summarize,
)
from humpback_trl.paths import public_name
from humpback_trl.scripts import eval as eval_script
from humpback_trl.tiny import build_model


def test_outcomes_and_summary_from_scripted_judgments() -> None:
    instructions = [{"instruction": f"q{i}", "dataset": "d"} for i in range(4)]
    answers = {"m0": ["a", "b", "c", "same"], "m1": ["A", "B", "C", "same"]}
    # (p_A, p_B) with m0's answer shown first, then with m1's shown first; the id is index|model_a|model_b.
    raw = {
        "0|m0|m1": {"p_a_first": 0.1, "p_b_first": 0.7, "p_a_second": 0.6, "p_b_second": 0.2},  # m1 in both orders
        "1|m0|m1": {"p_a_first": 0.8, "p_b_first": 0.1, "p_a_second": 0.7, "p_b_second": 0.1},  # always A: a tie
        "2|m0|m1": {"p_a_first": 0.6, "p_b_first": 0.3, "p_a_second": 0.2, "p_b_second": 0.4},  # m0 in both orders
    }
    records = outcomes(instructions, answers, raw, margin=0.0)
    assert [r["verdict"] for r in records] == [-1, 0, 1, 0]
    assert records[3]["identical"] and "a_first" not in records[3]
    assert records[0]["a_first"] == {"p_a": 0.1, "p_b": 0.7} and records[0]["b_first"] == {"p_a": 0.6, "p_b": 0.2}
    assert records[0]["prefer_a_when_first"] == pytest.approx(0.125)
    assert records[0]["prefer_a_when_second"] == pytest.approx(0.25)
    summary = summarize(records, answers, "m0", seed=0)
    (row,) = summary["table"]
    assert (row["model"], row["wins"], row["ties"], row["losses"], row["n"], row["preference"]) == (
        "m1",
        1,
        2,
        1,
        4,
        0.5,
    )
    assert row["ci_low"] < 0.5 < row["ci_high"]
    # 2 of the 3 judged instructions consistent; the first-shown answer won 4 of the 6 single verdicts.
    assert (row["position_consistency"], row["first_position_rate"]) == (0.6667, 0.6667)
    (pair,) = summary["pairs"]
    assert (pair["model_a"], pair["wins"], pair["ties"], pair["losses"]) == ("m0", 1, 2, 1)
    assert "ranking" not in summary  # two models: the table says it all
    pointwise = outcomes(instructions, answers, {k: {"score_a": 1.0, "score_b": 2.0} for k in raw}, margin=0.5)
    assert [r["verdict"] for r in pointwise] == [-1, -1, -1, 0] and "prefer_a_when_first" not in pointwise[0]
    assert summarize(pointwise, answers, "m0", seed=0)["table"][0]["position_consistency"] is None


def test_bootstrap_interval_is_fixed_by_its_seed() -> None:
    values = [1.0, 0.5, 0.0, 1.0, 1.0, 0.5, 1.0, 0.0, 1.0, 1.0]
    low, high = bootstrap_interval(values, seed=0)
    assert bootstrap_interval(values, seed=0) == (low, high)
    assert low < sum(values) / len(values) < high and 0 <= low and high <= 1
    # With 100 instructions the percentiles sit near the normal interval: mean 0.7, sd 0.4, se 0.04.
    many = values * 10
    mean = sum(many) / len(many)
    se = (sum((v - mean) ** 2 for v in many) / len(many) / len(many)) ** 0.5
    assert bootstrap_interval(many) == pytest.approx((mean - 1.96 * se, mean + 1.96 * se), abs=0.02)
    assert bootstrap_interval([1.0] * 8) == (1.0, 1.0) and bootstrap_interval([]) == (0.0, 0.0)
    # More instructions with the same outcomes: a narrower interval.
    wide, narrow = bootstrap_interval(values * 1), bootstrap_interval(values * 10)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_copeland_ranking_on_a_hand_made_win_matrix() -> None:
    # c beats everyone; a beats b; d beats b and ties a: Copeland c +3, a 0 (beats b, loses to c, ties d), d 0,
    # b -3; a and d tie on Copeland and are ordered by mean preference.
    matrix = {("a", "b"): 0.7, ("a", "c"): 0.2, ("a", "d"): 0.5, ("b", "c"): 0.1, ("b", "d"): 0.4, ("c", "d"): 0.9}
    preference = {**matrix, **{(b, a): 1 - p for (a, b), p in matrix.items()}}
    ranking = copeland_ranking(["a", "b", "c", "d"], preference)
    assert [(row["rank"], row["model"], row["copeland"]) for row in ranking] == [
        (1, "c", 3), (2, "a", 0), (3, "d", 0), (4, "b", -3)
    ]  # fmt: skip
    # a's mean preference (0.7 + 0.2 + 0.5) / 3 is above d's (0.5 + 0.6 + 0.1) / 3.
    assert [row["mean_preference"] for row in ranking[1:3]] == [pytest.approx(1.4 / 3, abs=1e-4), 0.4]
    assert (ranking[2]["beaten"], ranking[2]["lost_to"]) == (1, 1)


def adapter_folder(path, base):
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "peft_type": "LORA"}))
    return str(path)


def test_the_default_judge_is_never_a_compared_model(tmp_path, tiny_model_dir) -> None:
    m0, m1 = (adapter_folder(tmp_path / name, str(tiny_model_dir)) for name in ("m0", "m1"))
    args = EvalArguments(models=[m0, m1])
    assert default_judge(args.models) == str(tiny_model_dir)
    assert resolve_judge(args) == (str(tiny_model_dir), None)
    # Chosen by hand, a compared model stays possible and is named, so the report can flag it.
    assert resolve_judge(EvalArguments(models=[m0, m1], judge=m1)) == (m1, "m1")
    base = EvalArguments(models=[str(tiny_model_dir), m1], model_names=["base", "m1"], judge=str(tiny_model_dir))
    assert resolve_judge(base) == (str(tiny_model_dir), "base")
    with pytest.raises(ValueError, match="No default judge .* Set --judge"):
        default_judge([str(tiny_model_dir), m1])
    other = adapter_folder(tmp_path / "other", "another/base")
    with pytest.raises(ValueError, match="bases found: .*another/base'\\]"):
        default_judge([m0, other])


def test_alpaca_eval_format() -> None:
    rows = [{"instruction": "q1", "dataset": "helpful_base"}, {"instruction": "q2", "dataset": "oasst"}]
    assert alpaca_eval_outputs(rows, ["a1", "a2"], "m2") == [
        {"instruction": "q1", "output": "a1", "generator": "m2", "dataset": "helpful_base"},
        {"instruction": "q2", "output": "a2", "generator": "m2", "dataset": "oasst"},
    ]


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="at least two models"):
        EvalArguments(models=["out/m0"])
    with pytest.raises(ValueError, match="gives 1 names for 2 --models"):
        EvalArguments(models=["out/m0", "out/m1"], model_names=["a"])
    with pytest.raises(ValueError, match="distinct"):
        EvalArguments(models=["a/m0", "b/m0"])
    with pytest.raises(ValueError, match="--reference 'm9'"):
        EvalArguments(models=["out/m0", "out/m1"], reference="m9")
    with pytest.raises(ValueError, match="judge_method must list methods among"):
        EvalArguments(models=["out/m0", "out/m1"], judge_method=["pairwise", "vibes"])
    with pytest.raises(ValueError, match="rubric_margin and likelihood_margin must be at least 0"):
        EvalArguments(models=["out/m0", "out/m1"], rubric_margin=-1)
    args = EvalArguments(models=["out/m0", "out/m1", "out/m2/"], reference="out/m1", judge_method="rubric")
    assert (args.model_names, args.reference_name, args.judge_method) == (["m0", "m1", "m2"], "m1", ["rubric"])


def test_instruction_sets(tmp_path) -> None:
    bundled = load_instructions(EvalArguments(models=["a", "b"]))
    assert len(bundled) == 64 and bundled[0]["dataset"] == "builtin:eval"
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps({"prompt": "Hi"}) + "\n")
    with pytest.raises(KeyError, match="no column 'instruction'.*--instruction_column"):
        load_instructions(EvalArguments(models=["a", "b"], instructions=str(path)))
    assert load_instructions(EvalArguments(models=["a", "b"], instructions=str(path), instruction_column="prompt")) == [
        {"instruction": "Hi", "dataset": str(path)}
    ]


class ScriptedJudge:
    """A judge whose preference is a rule on the two answers it is shown, in place of a model's."""

    def __init__(self, method, rule):
        self.method, self.rule, self.margin = method, rule, 0.0

    @property
    def positional(self):
        return self.method == "pairwise"

    def judge(self, rows):
        if self.positional:
            found = []
            for row in rows:
                first = (0.8, 0.1) if self.rule(row["a"], row["b"]) else (0.1, 0.8)
                second = (0.8, 0.1) if self.rule(row["b"], row["a"]) else (0.1, 0.8)
                found.append({"p_a_first": first[0], "p_b_first": first[1], "p_a_second": second[0],
                              "p_b_second": second[1]})  # fmt: skip
            return found
        return [{"score_a": float(len(row["a"])), "score_b": float(len(row["b"]))} for row in rows]


SCRIPTED_ANSWERS = {
    "m0": ["short", "tiny", "brief"],
    "m1": ["a much longer answer", "another long answer", "the longest answer of all"],
    "m2": ["short", "a long answer", "a very long answer"],
}


class ReleaseRecorder:
    """The judge's engine, which the scripted judge never calls: only whether it was given back counts."""

    released = False

    def release(self) -> None:
        self.released = True


@pytest.mark.parametrize("judge_rule", ["longer", "first"])
def test_evaluate_with_a_scripted_judge(tmp_path, tiny_model_dir, monkeypatch, judge_rule: str) -> None:
    rule = (lambda a, b: len(a) > len(b)) if judge_rule == "longer" else (lambda a, b: True)
    monkeypatch.setattr(evaluation, "answer", lambda name, display, texts, args: SCRIPTED_ANSWERS[display])
    judge_engine = ReleaseRecorder()
    monkeypatch.setattr(evaluation, "load_judge", lambda name, args: (judge_engine, None))
    monkeypatch.setattr(evaluation, "Judge", lambda model, tokenizer, method, options: ScriptedJudge(method, rule))
    out = tmp_path / "eval"
    report = evaluation.evaluate(
        EvalArguments(
            models=["runs/m0", "runs/m1", "runs/m2"], judge=str(tiny_model_dir), max_instructions=3,
            output_dir=str(out), judge_method=["pairwise", "rubric"],
        )
    )  # fmt: skip
    pairwise, rubric = report["methods"]["pairwise"], report["methods"]["rubric"]
    # The labelled pairs: the longer answer is the chosen one in 104 of 140 pairs (truncated and evasive answers are
    # shorter, navigation text and blog posts longer), whatever the order; accuracies are reported to 4 decimals.
    dev = evaluation.load_pairwise_dev()
    longer = round(sum(len(row["chosen"]) > len(row["rejected"]) for row in dev) / len(dev), 4)
    assert rubric["calibration"]["pairwise_accuracy"] == longer
    counts = {name: {row["model"]: (row["wins"], row["ties"], row["losses"]) for row in result["table"]}
              for name, result in report["methods"].items()}  # fmt: skip
    # m2's first answer is m0's: a tie without a verdict; every other answer is longer, and wins.
    assert counts["rubric"] == {"m1": (3, 0, 0), "m2": (2, 1, 0)}
    assert [row["model"] for row in rubric["ranking"]] == ["m1", "m2", "m0"]
    if judge_rule == "longer":
        assert counts["pairwise"] == counts["rubric"] and pairwise["position_consistency"] == 1.0
        assert pairwise["calibration"]["pairwise_accuracy"] == longer
        assert report["headline_method"] == "pairwise"  # equal accuracy: the first listed
    else:
        # "A" whatever is shown: every verdict a tie, accuracy at chance, the judge undecided.
        assert counts["pairwise"] == {"m1": (0, 3, 0), "m2": (0, 3, 0)}
        assert pairwise["position_consistency"] == 0.0 and pairwise["first_position_rate"] == 1.0
        assert pairwise["calibration"]["pairwise_accuracy"] == 0.5 and pairwise["calibration"]["undecided"]
        assert report["headline_method"] == "rubric"
    assert report["table"] == report["methods"][report["headline_method"]]["table"]
    assert report["judge"] == public_name(str(tiny_model_dir)) and report["judge_is_compared"] is None
    assert json.loads((out / "report.json").read_text())["table"] == report["table"]
    outputs = json.loads((out / "model_outputs" / "m2.json").read_text())
    assert [set(r) for r in outputs] == [{"instruction", "output", "generator", "dataset"}] * 3
    assert [r["output"] for r in outputs] == SCRIPTED_ANSWERS["m2"] and {r["generator"] for r in outputs} == {"m2"}
    judgments = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert len(judgments) == 18 and sum(r["identical"] for r in judgments) == 2
    markdown = (out / "report.md").read_text()
    assert "| m1 | m0 |" in markdown and "### Judge method: rubric" in markdown
    assert ("UNDECIDED" in markdown) == (judge_rule == "first")
    assert (out / "winrate.png").stat().st_size > 0
    assert judge_engine.released  # through the interface: a vLLM judge's engine is given back too


def test_eval_command_on_tiny_models(tmp_path, tiny_tokenizer, tiny_model_dir) -> None:
    other = tmp_path / "other"
    tiny_tokenizer.save_pretrained(other)
    build_model(tiny_tokenizer, seed=1).save_pretrained(other)
    instructions = tmp_path / "questions.jsonl"
    rows = [{"instruction": "Explain how photosynthesis works.", "dataset": "mine"}, {"instruction": "Write a poem."}]
    instructions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dev = tmp_path / "pairs.jsonl"
    dev.write_text("".join(json.dumps(row) + "\n" for row in evaluation.load_pairwise_dev()[:10]))
    out = tmp_path / "eval"
    argv = [
        "--models", str(tiny_model_dir), str(other), "--model_names", "base", "other", "--instructions",
        str(instructions), "--max_new_tokens", "4", "--output_dir", str(out), "--judge", str(other),
        "--judge_method", "pairwise", "likelihood", "--pairwise_dev", str(dev),
    ]  # fmt: skip
    report = eval_script.run(argv)
    (row,) = report["table"]
    assert (row["model"], row["reference"], row["n"]) == ("other", "base", 2)
    assert report["judge"] == public_name(str(other)) and report["judge_is_compared"] == "other"
    assert "the judge is one of the compared models (other)" in (out / "report.md").read_text()
    for method in ("pairwise", "likelihood"):
        calibration = report["methods"][method]["calibration"]
        assert calibration["pairs"] == 10 and calibration["pairwise_dev"] == public_name(str(dev))
        assert (out / "calibration" / method / "data.jsonl").is_file()
    judged = [r for r in map(json.loads, (out / "judgments.jsonl").read_text().splitlines()) if not r["identical"]]
    for record in (r for r in judged if r["method"] == "pairwise"):
        assert all(0 < p < 1 for order in ("a_first", "b_first") for p in record[order].values())
    outputs = json.loads((out / "model_outputs" / "base.json").read_text())
    assert [r["dataset"] for r in outputs] == ["mine", str(instructions)]
    # A rerun resumes from the finished shards instead of answering and judging again.
    assert eval_script.run(argv)["methods"] == report["methods"]


def test_the_judge_prefix_cache_changes_no_probability_and_shortens_every_forward(tiny_model, tiny_tokenizer) -> None:
    from humpback_trl.chat_template import encode

    cue = judges.judge_cue(tiny_tokenizer)
    prefix = judges.judge_prefix_ids(tiny_tokenizer, cue)
    cases = [("Name a colour.", "Red.", "Blue is a colour."), ("Write a poem.", "Roses are red.", "No."),
             ("Explain how photosynthesis works.", "Plants turn light into sugar.", "It is magic.")]  # fmt: skip
    prompts = [judges.judge_prompt(tiny_tokenizer, cue, *case) for case in cases]
    assert all(encode(tiny_tokenizer, prompt)[: len(prefix)] == prefix for prompt in prompts)
    widths = []
    tiny_model.register_forward_pre_hook(lambda _, args, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    cached = judges.option_probabilities(tiny_model, tiny_tokenizer, prompts, cue, batch_size=2)
    cached_widths, widths[:] = list(widths), []
    plain = judges.option_probabilities(tiny_model, tiny_tokenizer, prompts, cue, 2, prefix_cache=False)
    flat = [p for pair in plain for p in pair]
    assert [p for pair in cached for p in pair] == pytest.approx(flat, abs=1e-5)
    # The judging instructions run once (the first forward), then only what follows them in each batch.
    assert cached_widths[0] == len(prefix) and len(cached_widths) == 1 + len(widths)
    assert all(c == w - len(prefix) for c, w in zip(cached_widths[1:], widths, strict=True))


def test_model_names_resolve_to_adapter_or_base(tmp_path, tiny_model_dir) -> None:
    from humpback_trl.model_specs import model_arguments, short_name

    adapter = tmp_path / "m1"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    assert model_arguments(str(adapter)).adapter == str(adapter)
    assert model_arguments(str(tiny_model_dir)).model_name_or_path == str(tiny_model_dir)
    assert model_arguments("builtin:tiny-llama").model_name_or_path == "builtin:tiny-llama"
    assert model_arguments("nobody/not-cached").model_name_or_path == "nobody/not-cached"  # offline, not cached
    assert [short_name(n) for n in ("out/m1/", "builtin:tiny-llama", "org/repo")] == ["m1", "tiny-llama", "repo"]


def test_adapters_answer_in_their_training_format_with_both_tags(tmp_path, tiny_model_dir) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from humpback_trl.chat_template import render
    from humpback_trl.collators import SwappedFieldCollator, save_prompt_settings
    from humpback_trl.tagging import SEED_TAG, WEB_TAG

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    adapter = tmp_path / "m1"
    config = LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM")
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config).save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    save_prompt_settings(SwappedFieldCollator(tokenizer, direction="forward", system_prompt="Be brief."), adapter)
    args = EvalArguments(models=[str(tiny_model_dir), str(adapter)])
    _, _, tagged = evaluation.answer_prompts(str(adapter), ["Name a colour."], args)
    assert "Be brief." in tagged[0] and f"Name a colour.\n\n{SEED_TAG} {WEB_TAG}" in tagged[0]
    # The prompt `humpback chat` answers, with each tag setting.
    assert tagged == [load_humpback(str(adapter), engine="transformers").prompt("Name a colour.")]
    seed_only = EvalArguments(models=[str(tiny_model_dir), str(adapter)], tags="seed")
    _, _, seeded = evaluation.answer_prompts(str(adapter), ["Name a colour."], seed_only)
    assert WEB_TAG not in seeded[0]
    assert seeded == [load_humpback(str(adapter), tags="seed", engine="transformers").prompt("Name a colour.")]
    _, _, plain = evaluation.answer_prompts(str(tiny_model_dir), ["Name a colour."], args)
    assert plain == [render(tokenizer, [{"role": "user", "content": "Name a colour."}], add_generation_prompt=True)]
