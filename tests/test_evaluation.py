"""Evaluation: the swap-agreement rule on scripted judges, AlpacaEval's format, the tiny-model end to end run."""

import json

import pytest

from humpback_trl import evaluation
from humpback_trl.evaluation import (
    EvalArguments,
    alpaca_eval_outputs,
    load_instructions,
    outcomes,
    summarize,
    verdict,
    win_rate,
)
from humpback_trl.scripts import eval as eval_script
from humpback_trl.tiny import build_model


def test_verdict_needs_both_orders() -> None:
    assert verdict(0.9, 0.6) == 1
    assert verdict(0.2, 0.4) == -1
    assert verdict(0.9, 0.1) == 0  # each order prefers the answer shown first: position bias, a tie
    assert verdict(0.5, 0.9) == 0


def test_outcomes_and_summary_from_scripted_probabilities() -> None:
    instructions = [{"instruction": f"q{i}", "dataset": "d"} for i in range(4)]
    answers = {"m0": ["a", "b", "c", "same"], "m1": ["A", "B", "C", "same"]}
    # (p_A, p_B) for each order; the id is index|model_a|model_b|model shown first.
    probabilities = {
        "0|m0|m1|m0": (0.1, 0.7), "0|m0|m1|m1": (0.6, 0.2),  # m1 preferred in both orders: m1 wins
        "1|m0|m1|m0": (0.8, 0.1), "1|m0|m1|m1": (0.7, 0.1),  # A preferred in both orders: a tie
        "2|m0|m1|m0": (0.6, 0.3), "2|m0|m1|m1": (0.2, 0.4),  # m0 preferred in both orders: m1 loses
    }  # fmt: skip
    records = outcomes(instructions, answers, probabilities)
    assert [r["verdict"] for r in records] == [-1, 0, 1, 0]
    assert records[3]["identical"] and "a_first" not in records[3]
    assert records[0]["a_first"] == {"p_a": 0.1, "p_b": 0.7} and records[0]["b_first"] == {"p_a": 0.6, "p_b": 0.2}
    assert records[0]["prefer_a_when_first"] == pytest.approx(0.125)
    assert records[0]["prefer_a_when_second"] == pytest.approx(0.25)
    summary = summarize(records, answers, "m0")
    (row,) = summary["table"]
    assert (row["model"], row["wins"], row["ties"], row["losses"], row["n"]) == ("m1", 1, 2, 1, 4)
    # 2 of the 3 judged instructions consistent; the first-shown answer won 4 of the 6 single verdicts.
    assert (row["position_consistency"], row["first_position_rate"]) == (0.6667, 0.6667)
    assert summary["pairs"] == [
        {"model_a": "m0", "model_b": "m1", "wins": 1, "ties": 2, "losses": 1, "position_consistency": 0.6667,
         "first_position_rate": 0.6667}
    ]  # fmt: skip
    assert summary["mean_length"] == {"m0": 1.8, "m1": 1.8}  # (1 + 1 + 1 + 4) / 4, to 0.1 character


def test_win_rate_interval_by_hand() -> None:
    # Outcomes 1, 0.5, 0.5, 0: mean 0.5, variance 0.125, half width 1.96 * sqrt(0.125 / 4).
    assert win_rate(1, 2, 1) == {"win_rate": 0.5, "ci_low": 0.1535, "ci_high": 0.8465}
    assert win_rate(3, 0, 0) == {"win_rate": 1.0, "ci_low": 1.0, "ci_high": 1.0}


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
    args = EvalArguments(models=["out/m0", "out/m1", "out/m2/"], reference="out/m1")
    assert (args.model_names, args.reference_name, args.judge_model) == (["m0", "m1", "m2"], "m1", "out/m2/")


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


def between(prompt: str, start: str, end: str) -> str:
    return prompt.split(start, 1)[1].split(end, 1)[0]


def scripted_judge(prefer):
    """A judge whose preference is a rule on the two answers it is shown, in place of the model's probabilities."""

    def probabilities(model, tokenizer, prompts, cue, batch_size):
        found = []
        for prompt in prompts:
            a = between(prompt, "### Response A:\n", "\n\n### Response B:\n")
            b = between(prompt, "### Response B:\n", "<|im_end|>")
            found.append((0.8, 0.1) if prefer(a, b) else (0.1, 0.8))
        return found

    return probabilities


SCRIPTED_ANSWERS = {
    "m0": ["short", "tiny", "brief"],
    "m1": ["a much longer answer", "another long answer", "the longest answer of all"],
    "m2": ["short", "a long answer", "a very long answer"],
}


@pytest.mark.parametrize("judge_rule", ["longer", "first"])
def test_evaluate_with_a_scripted_judge(tmp_path, tiny_model_dir, monkeypatch, judge_rule: str) -> None:
    rule = (lambda a, b: len(a) > len(b)) if judge_rule == "longer" else (lambda a, b: True)
    monkeypatch.setattr(evaluation, "answer", lambda name, display, texts, args: SCRIPTED_ANSWERS[display])
    monkeypatch.setattr(evaluation, "option_probabilities", scripted_judge(rule))
    out = tmp_path / "eval"
    report = evaluation.evaluate(
        EvalArguments(
            models=["runs/m0", "runs/m1", "runs/m2"], judge=str(tiny_model_dir), max_instructions=3, output_dir=str(out)
        )
    )
    table = {row["model"]: row for row in report["table"]}
    counts = {name: (row["wins"], row["ties"], row["losses"]) for name, row in table.items()}
    if judge_rule == "longer":
        # m2's first answer is m0's: a tie without a verdict; every other answer is longer, and wins both orders.
        assert counts == {"m1": (3, 0, 0), "m2": (2, 1, 0)}
        assert report["position_consistency"] == 1.0 and report["first_position_rate"] == 0.5
    else:
        assert counts == {"m1": (0, 3, 0), "m2": (0, 3, 0)}
        assert report["position_consistency"] == 0.0 and report["first_position_rate"] == 1.0
    assert table["m1"]["mean_length"] == pytest.approx(sum(map(len, SCRIPTED_ANSWERS["m1"])) / 3, abs=0.05)
    assert json.loads((out / "report.json").read_text())["table"] == report["table"]
    outputs = json.loads((out / "model_outputs" / "m2.json").read_text())
    assert [set(r) for r in outputs] == [{"instruction", "output", "generator", "dataset"}] * 3
    assert [r["output"] for r in outputs] == SCRIPTED_ANSWERS["m2"] and {r["generator"] for r in outputs} == {"m2"}
    judgments = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert len(judgments) == 9 and sum(r["identical"] for r in judgments) == 1
    assert (out / "winrate.png").stat().st_size > 0 and "| m1 | m0 |" in (out / "report.md").read_text()


def test_eval_command_on_tiny_models(tmp_path, tiny_tokenizer, tiny_model_dir) -> None:
    other = tmp_path / "other"
    tiny_tokenizer.save_pretrained(other)
    build_model(tiny_tokenizer, seed=1).save_pretrained(other)
    instructions = tmp_path / "questions.jsonl"
    rows = [{"instruction": "Explain how photosynthesis works.", "dataset": "mine"}, {"instruction": "Write a poem."}]
    instructions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "eval"
    argv = [
        "--models", str(tiny_model_dir), str(other), "--model_names", "base", "other", "--instructions",
        str(instructions), "--max_new_tokens", "4", "--output_dir", str(out),
    ]  # fmt: skip
    report = eval_script.run(argv)
    (row,) = report["table"]
    assert (row["model"], row["reference"], row["n"]) == ("other", "base", 2)
    assert report["judge"] == str(other) and report["judge_is_compared"] == "other"
    judged = [r for r in map(json.loads, (out / "judgments.jsonl").read_text().splitlines()) if not r["identical"]]
    for record in judged:
        assert all(0 < p < 1 for order in ("a_first", "b_first") for p in record[order].values())
    outputs = json.loads((out / "model_outputs" / "base.json").read_text())
    assert [r["dataset"] for r in outputs] == ["mine", str(instructions)]
    # A rerun resumes from the finished shards instead of answering again.
    assert eval_script.run(argv)["table"] == report["table"]


def test_the_judge_prefix_cache_changes_no_probability_and_shortens_every_forward(tiny_model, tiny_tokenizer) -> None:
    from humpback_trl.chat_template import encode

    cue = evaluation.judge_cue(tiny_tokenizer)
    prefix = evaluation.judge_prefix_ids(tiny_tokenizer, cue)
    cases = [("Name a colour.", "Red.", "Blue is a colour."), ("Write a poem.", "Roses are red.", "No."),
             ("Explain how photosynthesis works.", "Plants turn light into sugar.", "It is magic.")]  # fmt: skip
    prompts = [evaluation.judge_prompt(tiny_tokenizer, cue, *case) for case in cases]
    assert all(encode(tiny_tokenizer, prompt)[: len(prefix)] == prefix for prompt in prompts)
    widths = []
    tiny_model.register_forward_pre_hook(lambda _, args, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    cached = evaluation.option_probabilities(tiny_model, tiny_tokenizer, prompts, cue, batch_size=2)
    cached_widths, widths[:] = list(widths), []
    plain = evaluation.option_probabilities(tiny_model, tiny_tokenizer, prompts, cue, 2, prefix_cache=False)
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
    _, _, plain = evaluation.answer_prompts(str(tiny_model_dir), ["Name a colour."], args)
    assert plain == [render(tokenizer, [{"role": "user", "content": "Name a colour."}], add_generation_prompt=True)]
