"""Did it work? Every model (base, M0..MK, any adapter or Hub id) answers one instruction set, and a judge that is
not one of them compares every two models' answers to each instruction, with its accuracy measured first.

- Answers: greedy by default, on the `engine` option's engine (transformers or vLLM; the judge runs on it too);
  adapters get their training prompt format and both source tags (as `humpback chat`, the paper's best inference
  setting), base models their chat template.
  Each model's answers are written in AlpacaEval's `model_outputs` format (a JSON list of
  `{instruction, output, generator, dataset}`), so `alpaca_eval --model_outputs FILE` runs on them unchanged.
- Judge: by default the base model the compared adapters were trained from (never one of them: a model favours its
  own answers); a judge that is one of the compared models is flagged in the report. Each method of
  `judge_method` (`judges.py`: the pairwise A/B cue in both orders, the rubric or the likelihood signals scoring
  each answer alone) first judges the labelled pairs of `pairwise_dev`; its accuracy there stands beside its table,
  and a judge below `min_judge_accuracy` is reported as undecided.
- Outcomes: per pair of models and instruction a win, tie or loss (identical answers tie without a verdict); per
  pair of models win / tie / loss and the mean preference (win 1, tie 0.5, loss 0) with a bootstrap 95% interval
  over instructions (fixed seed); with more than two models a Copeland ranking over all pairs. The headline method
  is the most accurate one listed. The mean answer length stands beside each row (a judge's length bias shows
  there).

Answers, calibration and judgments run shard by shard on every accelerate process (`shards.run_sharded`), so a
killed evaluation resumes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import PartialState
from transformers import PreTrainedTokenizerBase

from humpback_trl.chat import adapter_prompt
from humpback_trl.chat_template import render
from humpback_trl.collators import load_collator
from humpback_trl.configs import BOOTSTRAP_SEED, TAG_CHOICES, EvalArguments
from humpback_trl.engines import Engine, choose_engine, generate, load_engine
from humpback_trl.errors import MissingColumnError, UserError
from humpback_trl.judges import (
    Judge,
    JudgeOptions,
    accuracy_note,
    calibration_from_raw,
    calibration_lines,
    load_pairwise_dev,
    position_stats,
    read_judgment,
)
from humpback_trl.model_specs import is_adapter, model_arguments
from humpback_trl.modeling import adapter_base_name, adapter_folder, load_tokenizer
from humpback_trl.pairs import load_table
from humpback_trl.paths import public_name
from humpback_trl.shards import run_sharded
from humpback_trl.stage_outputs import EVAL

logger = logging.getLogger(__name__)

BOOTSTRAP_RESAMPLES = 1000


def judge_options(args: EvalArguments) -> JudgeOptions:
    return JudgeOptions(args.judge_batch_size, args.rubric_prompt, args.rubric_margin, args.likelihood_margin)


def default_judge(models: Sequence[str]) -> str:
    """The base model every compared adapter was trained from: a judge that wrote none of the answers."""
    # The built-in name an adapter keeps in its prompt settings: the judge loads the weights training used.
    bases = {adapter_base_name(model) for model in models if is_adapter(model)}
    if len(bases) != 1 or not all(is_adapter(model) for model in models):
        raise UserError(
            f"No default judge for --models {list(models)}: it is the one base model of the compared adapters, and "
            f"these are not all adapters of one base (bases found: {sorted(bases)}). Set --judge to a model."
        )
    return bases.pop()


def resolve_judge(args: EvalArguments) -> tuple[str, str | None]:
    """The judge model, and the display name of the compared model it is (None when it is none of them)."""
    judge = args.judge or default_judge(args.models)
    same = [display for name, display in zip(args.models, args.model_names, strict=True) if _same(name, judge)]
    return judge, (same[0] if same else None)


def _same(a: str, b: str) -> bool:
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


def load_instructions(args: EvalArguments) -> list[dict[str, str]]:
    """Rows `{instruction, dataset}`: the set's own `dataset` column where it has one (AlpacaEval's does), else the
    set's name."""
    table = load_table(args.instructions, split=args.instructions_split, config_name=args.instructions_config)
    if args.instruction_column not in table.column_names:
        raise MissingColumnError(
            f"{args.instructions}: no column {args.instruction_column!r}; its columns are {table.column_names}. "
            "Set --instruction_column."
        )
    if args.max_instructions is not None:
        table = table.select(range(min(args.max_instructions, len(table))))
    datasets = table["dataset"] if "dataset" in table.column_names else [args.instructions] * len(table)
    rows = []
    for index, (text, dataset) in enumerate(zip(table[args.instruction_column], datasets, strict=True)):
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{args.instructions}, row {index}: empty {args.instruction_column!r}")
        rows.append({"instruction": text, "dataset": dataset or args.instructions})
    return rows


def answer_prompts(
    name: str, instructions: Sequence[str], args: EvalArguments
) -> tuple[Engine, PreTrainedTokenizerBase, list[str]]:
    """The model on the evaluation's engine, its tokenizer, and each instruction's prompt: an adapter's training
    format with its tags (`chat.adapter_prompt`, as `humpback chat` prompts), else the model's own chat template."""
    spec = model_arguments(name, args.dtype, args.load_in_4bit)
    tokenizer = load_tokenizer(spec)
    if spec.adapter:
        collator = load_collator(tokenizer, adapter_folder(spec), "forward")
        prompts = [adapter_prompt(tokenizer, collator, text, TAG_CHOICES[args.tags]) for text in instructions]
    else:
        messages = [[{"role": "user", "content": text}] for text in instructions]
        prompts = [render(tokenizer, turns, add_generation_prompt=True) for turns in messages]
    return load_engine(spec, args.engine), tokenizer, prompts


def answer(name: str, display: str, instructions: Sequence[str], args: EvalArguments) -> list[str]:
    """One model's answers, in instruction order (resumable under `output_dir/answers/<name>`); its engine gives its
    memory back before the next model loads."""
    engine, tokenizer, prompts = answer_prompts(name, instructions, args)
    sampling = args.sampling

    def work(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        outputs = generate(engine, tokenizer, [row["prompt"] for row in rows], sampling, args.token_budget)
        return [{"id": row["id"], "output": output} for row, output in zip(rows, outputs, strict=True)]

    try:
        done = run_sharded(
            [{"id": str(i), "prompt": prompt} for i, prompt in enumerate(prompts)],
            work,
            Path(args.output_dir) / "answers" / display,
            shard_size=args.shard_size,
            key="id",
            desc=f"Answering with {display}",
            job={"model": name, "tags": args.tags, "sampling": vars(sampling), "engine": engine.name},
        )
    finally:
        engine.release()
    return list(done["output"])


def alpaca_eval_outputs(
    instructions: Sequence[Mapping[str, str]], outputs: Sequence[str], generator: str
) -> list[dict[str, str]]:
    """AlpacaEval's `model_outputs` records, in instruction order."""
    return [
        {"instruction": row["instruction"], "output": output, "generator": generator, "dataset": row["dataset"]}
        for row, output in zip(instructions, outputs, strict=True)
    ]


def comparisons(
    instructions: Sequence[Mapping[str, str]], answers: Mapping[str, Sequence[str]]
) -> list[dict[str, Any]]:
    """One row per (model pair, instruction) whose answers differ: `a` is the first model's answer, `b` the
    second's."""
    rows = []
    for a, b in itertools.combinations(answers, 2):
        for index, row in enumerate(instructions):
            if answers[a][index] != answers[b][index]:
                rows.append(
                    {"id": f"{index}|{a}|{b}", "instruction": row["instruction"], "a": answers[a][index],
                     "b": answers[b][index]}
                )  # fmt: skip
    return rows


def run_judge(
    judge: Judge, rows: Sequence[dict[str, Any]], work_dir: Path, args: EvalArguments, job: dict[str, Any]
) -> dict[str, dict[str, float]]:
    """The judge's raw judgments per row id (`Judge.judge`), resumable under `work_dir`."""
    if not rows:
        return {}

    def work(shard: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"id": row["id"], **raw} for row, raw in zip(shard, judge.judge(shard), strict=True)]

    done = run_sharded(
        rows, work, work_dir, shard_size=args.shard_size, key="id", desc=f"Judging ({judge.method})",
        job={**job, "method": judge.method, "rubric_prompt": args.rubric_prompt},
    )  # fmt: skip
    return {row["id"]: {key: value for key, value in row.items() if key != "id"} for row in done}


def calibrate(judge: Judge, judge_name: str, args: EvalArguments) -> dict[str, Any]:
    """The judge's accuracy on the labelled pairs (resumable under `output_dir/calibration/<method>`)."""
    dev = load_pairwise_dev(args.pairwise_dev)
    rows = [
        {"id": row["pair_id"], "instruction": row["prompt"], "a": row["chosen"], "b": row["rejected"]} for row in dev
    ]
    job = {"judge": judge_name, "pairwise_dev": args.pairwise_dev}
    raw = run_judge(judge, rows, Path(args.output_dir) / "calibration" / judge.method, args, job)
    metrics, _ = calibration_from_raw(
        judge, dev, [raw[row["id"]] for row in rows], judge_name=public_name(judge_name),
        dev_set=public_name(args.pairwise_dev), min_accuracy=args.min_judge_accuracy,
    )  # fmt: skip
    return metrics


def outcomes(
    instructions: Sequence[Mapping[str, str]],
    answers: Mapping[str, Sequence[str]],
    raw: Mapping[str, Mapping[str, float]],
    margin: float,
) -> list[dict[str, Any]]:
    """One record per (model pair, instruction): the read judgment (`judges.read_judgment`) and the verdict for
    `model_a`; identical answers tie without a judgment."""
    records = []
    for a, b in itertools.combinations(answers, 2):
        for index, row in enumerate(instructions):
            record: dict[str, Any] = {"index": index, "instruction": row["instruction"], "model_a": a, "model_b": b}
            if answers[a][index] == answers[b][index]:
                records.append({**record, "identical": True, "verdict": 0})
            else:
                records.append({**record, "identical": False, **read_judgment(raw[f"{index}|{a}|{b}"], margin)})
    return records


def bootstrap_interval(
    values: Sequence[float], seed: int = BOOTSTRAP_SEED, resamples: int = BOOTSTRAP_RESAMPLES
) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the mean over `resamples` resamples of `values` with replacement."""
    if not values:
        return 0.0, 0.0
    data = np.asarray(values, dtype=float)
    draws = np.random.default_rng(seed).integers(0, len(data), size=(resamples, len(data)))
    low, high = np.percentile(data[draws].mean(axis=1), [2.5, 97.5])
    return round(float(low), 4), round(float(high), 4)


def pair_outcomes(records: Sequence[Mapping[str, Any]], model: str, other: str) -> list[float]:
    """`model`'s outcome against `other` per instruction: 1 win, 0.5 tie, 0 loss."""
    signed = [
        record["verdict"] if record["model_a"] == model else -record["verdict"]
        for record in records
        if {record["model_a"], record["model_b"]} == {model, other}
    ]
    return [(value + 1) / 2 for value in signed]


def pair_summary(records: Sequence[Mapping[str, Any]], model: str, other: str, seed: int) -> dict[str, Any]:
    """Wins / ties / losses of `model` against `other`, its mean preference and the bootstrap 95% interval."""
    values = pair_outcomes(records, model, other)
    low, high = bootstrap_interval(values, seed)
    return {
        "wins": values.count(1.0),
        "ties": values.count(0.5),
        "losses": values.count(0.0),
        "n": len(values),
        "preference": round(statistics.fmean(values), 4) if values else 0.0,
        "ci_low": low,
        "ci_high": high,
    }


def copeland_ranking(models: Sequence[str], preference: Mapping[tuple[str, str], float]) -> list[dict[str, Any]]:
    """Models by Copeland score (opponents beaten minus opponents lost to: a mean preference above or below 0.5),
    then by mean preference over all opponents; `preference[(a, b)]` is a's over b for every ordered pair."""
    rows = []
    for model in models:
        against = [preference[(model, other)] for other in models if other != model]
        beaten, lost = sum(p > 0.5 for p in against), sum(p < 0.5 for p in against)
        rows.append(
            {"model": model, "copeland": beaten - lost, "beaten": beaten, "lost_to": lost,
             "mean_preference": round(statistics.fmean(against), 4)}
        )  # fmt: skip
    rows.sort(key=lambda row: (-row["copeland"], -row["mean_preference"]))
    return [{"rank": rank, **row} for rank, row in enumerate(rows, start=1)]


def mean_length(texts: Sequence[str]) -> float:
    return round(statistics.fmean(len(text) for text in texts), 1) if texts else 0.0


def summarize(
    records: Sequence[Mapping[str, Any]], answers: Mapping[str, Sequence[str]], reference: str, seed: int
) -> dict[str, Any]:
    """The table (each model against the reference), every pair's outcome, and with more than two models the
    Copeland ranking over all pairs."""

    def position(a: str, b: str) -> dict[str, float | None]:
        return position_stats([r for r in records if {r["model_a"], r["model_b"]} == {a, b} and not r["identical"]])

    table = [
        {"model": model, "reference": reference, **pair_summary(records, model, reference, seed),
         **position(model, reference), "mean_length": mean_length(answers[model]),
         "reference_mean_length": mean_length(answers[reference])}
        for model in answers if model != reference
    ]  # fmt: skip
    pairs = [
        {"model_a": a, "model_b": b, **pair_summary(records, a, b, seed), **position(a, b)}
        for a, b in itertools.combinations(answers, 2)
    ]
    summary = {"table": table, "pairs": pairs, **position_stats([r for r in records if not r["identical"]])}
    if len(answers) > 2:
        preference = {}
        for pair in pairs:
            preference[(pair["model_a"], pair["model_b"])] = pair["preference"] if pair["n"] else 0.5
            preference[(pair["model_b"], pair["model_a"])] = 1 - preference[(pair["model_a"], pair["model_b"])]
        summary["ranking"] = copeland_ranking(list(answers), preference)
    return summary


def headline_method(methods: Mapping[str, Mapping[str, Any]]) -> str:
    """The listed method with the best accuracy on the labelled pairs (the first listed among equals)."""
    return max(methods, key=lambda method: methods[method]["calibration"]["pairwise_accuracy"])


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table_markdown(table: Sequence[Mapping[str, Any]]) -> list[str]:
    """The win / tie / loss table (report.md lines; the loop's report embeds it)."""
    lines = [
        "| model | vs | win | tie | loss | preference (95% CI) | consistency | mean length (chars) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        lines.append(
            f"| {row['model']} | {row['reference']} | {row['wins']} | {row['ties']} | {row['losses']} | "
            f"{row['preference']:.2f} ({row['ci_low']:.2f}-{row['ci_high']:.2f}) | "
            f"{_fmt(row['position_consistency'])} | {row['mean_length']:.0f} (ref {row['reference_mean_length']:.0f}) |"
        )
    return lines


def method_lines(method: str, result: Mapping[str, Any]) -> list[str]:
    """One method's section: the judge's accuracy, then its table and ranking (marked as no result when the judge
    is undecided)."""
    undecided = result["calibration"]["undecided"]
    lines = ["", f"### Judge method: {method}", "", accuracy_note(result["calibration"]), ""]
    if undecided:
        lines += ["Raw verdicts of an undecided judge (no result):", ""]
    lines += table_markdown(result["table"])
    if "ranking" in result and not undecided:
        order = ", ".join(f"{row['model']} ({row['copeland']:+d})" for row in result["ranking"])
        lines += ["", f"Ranking (Copeland over all pairs, mean preference 95% intervals in report.json): {order}"]
    return lines


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """What was compared and how, the judge's calibration, and each method's table (the loop's report embeds these)."""
    flagged = report.get("judge_is_compared")
    lines = [
        f"{report['instructions_count']} instructions from `{report['instructions']}`; judge `{report['judge']}`; "
        f"reference `{report['reference']}`; headline method: {report['headline_method']}.",
        *([f"Note: the judge is one of the compared models ({flagged}): expect it to favour its own answers."]
          if flagged else []),
        "",
        *calibration_lines([result["calibration"] for result in report["methods"].values()]),
    ]  # fmt: skip
    for method, result in report["methods"].items():
        lines += method_lines(method, result)
    return lines


def render_markdown(report: Mapping[str, Any]) -> str:
    lines = [
        "# Evaluation",
        "",
        *summary_lines(report),
        "",
        "AlpacaEval outputs: " + ", ".join(f"`{path}`" for path in report["model_outputs"].values()),
    ]
    return "\n".join(lines) + "\n"


def plot(table: Sequence[Mapping[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 0.6 * len(table) + 1.2))
    names = [f"{row['model']} vs {row['reference']}" for row in table]
    left = [0.0] * len(table)
    for key, color in (("wins", "#4caf50"), ("ties", "#bdbdbd"), ("losses", "#e57373")):
        shares = [row[key] / row["n"] if row["n"] else 0.0 for row in table]
        axis.barh(names, shares, left=left, color=color, label=key)
        left = [a + b for a, b in zip(left, shares, strict=True)]
    axis.set_xlim(0, 1)
    axis.set_xlabel("share of instructions")
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_files(
    report: dict[str, Any],
    records: Mapping[str, Sequence[Mapping[str, Any]]],
    instructions: Sequence[Mapping[str, str]],
    answers: Mapping[str, Sequence[str]],
    output_dir: Path,
) -> None:
    outputs_dir = output_dir / "model_outputs"
    outputs_dir.mkdir(parents=True, exist_ok=True)
    for name, texts in answers.items():
        records_json = alpaca_eval_outputs(instructions, texts, name)
        (output_dir / report["model_outputs"][name]).write_text(
            json.dumps(records_json, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    with (output_dir / EVAL.judgments).open("w", encoding="utf-8") as handle:
        for method, rows in records.items():
            handle.writelines(json.dumps({"method": method, **row}, ensure_ascii=False) + "\n" for row in rows)
    (output_dir / EVAL.report).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (output_dir / EVAL.markdown).write_text(render_markdown(report), encoding="utf-8")
    if report["table"]:
        plot(report["table"], output_dir / "winrate.png")


def evaluate(args: EvalArguments) -> dict[str, Any]:
    """Answer, calibrate the judge, judge, and write `output_dir`: report.json (per method its calibration, table,
    pairs and ranking; "table" is the headline method's), report.md, winrate.png, judgments.jsonl and
    model_outputs/<name>.json. Returns the report on every process."""
    output_dir = Path(args.output_dir)
    instructions = load_instructions(args)
    texts = [row["instruction"] for row in instructions]
    answers: dict[str, list[str]] = {}
    for name, display in zip(args.models, args.model_names, strict=True):
        answers[display] = answer(name, display, texts, args)
    judge_name, compared = resolve_judge(args)
    judge_engine, tokenizer = load_judge(judge_name, args)
    rows = comparisons(instructions, answers)
    # The answers' digest: judgments of other answers (another max_new_tokens) are never taken as finished.
    job = {"judge": judge_name, "answers_sha256": hashlib.sha256(json.dumps(answers).encode()).hexdigest()[:16]}
    methods: dict[str, dict[str, Any]] = {}
    records: dict[str, list[dict[str, Any]]] = {}
    for method in args.judge_method:
        judge = Judge(judge_engine, tokenizer, method, judge_options(args))
        calibration = calibrate(judge, judge_name, args)
        raw = run_judge(judge, rows, output_dir / "judgments" / method, args, job)
        records[method] = outcomes(instructions, answers, raw, judge.margin)
        methods[method] = {
            "calibration": calibration,
            **summarize(records[method], answers, args.reference_name, args.bootstrap_seed),
        }
    judge_engine.release()
    headline = headline_method(methods)
    report = {
        "instructions": public_name(args.instructions),
        "instructions_count": len(instructions),
        "judge": public_name(judge_name),
        "judge_is_compared": compared,
        "reference": args.reference_name,
        "models": {name: public_name(model) for name, model in zip(args.model_names, args.models, strict=True)},
        "sampling": vars(args.sampling),
        "tags": args.tags,
        "headline_method": headline,
        "judge_accuracy": methods[headline]["calibration"]["pairwise_accuracy"],
        "judge_undecided": methods[headline]["calibration"]["undecided"],
        "table": methods[headline]["table"],
        "methods": methods,
        "mean_length": {name: mean_length(texts) for name, texts in answers.items()},
        # Inside output_dir: the report names no local prefix.
        "model_outputs": {name: f"model_outputs/{name}.json" for name in answers},
    }
    state = PartialState()
    if state.is_main_process:
        write_files(report, records, instructions, answers, output_dir)
    state.wait_for_everyone()
    return report


def load_judge(name: str, args: EvalArguments) -> tuple[Engine, PreTrainedTokenizerBase]:
    """The judge on the evaluation's engine (an adapter served as one, or merged into its base on transformers),
    and its tokenizer."""
    spec = model_arguments(name, args.dtype, args.load_in_4bit)
    engine = choose_engine(args.engine, spec, "likelihood" in args.judge_method)
    return load_engine(spec, engine), load_tokenizer(spec)
