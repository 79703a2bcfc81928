"""Did it work? Every model (base, M0..MK, any adapter or Hub id) answers one instruction set, and a local judge
compares every two models' answers to each instruction.

- Answers: greedy by default, through the project's generation engine; adapters get their training prompt format
  and both source tags (as `humpback chat`, the paper's best inference setting), base models their chat template.
  Each model's answers are written in AlpacaEval's `model_outputs` format (a JSON list of
  `{instruction, output, generator, dataset}`), so `alpaca_eval --model_outputs FILE` runs on them unchanged.
- Verdicts: the judge sees the instruction and two answers and is cued to name the better one; its preference is
  read from the next-token probabilities of "A" and "B" (no parsing), in both orders. A model wins an instruction
  only when both orders prefer it; otherwise it is a tie (Balanced Position Calibration, Wang et al. 2023). The raw
  probabilities are kept in `judgments.jsonl`; the share of consistent verdicts is the judge's position
  consistency. Identical answers tie without a verdict. The judging instructions every prompt starts with run
  once per shard and their KV cache is reused.
- Report: per model, win / tie / loss against the reference (the first model by default: M0 in the loop) with the
  win rate (wins + ties / 2) and its 95% interval, and the mean answer length (a judge's length bias shows there).

Both steps run shard by shard on every accelerate process (`shards.run_sharded`), so a killed evaluation resumes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from humpback_trl.chat import TAG_CHOICES, load_humpback
from humpback_trl.chat_template import encode, render
from humpback_trl.generation import CACHE_ARGUMENT, SamplingConfig, generate
from humpback_trl.model_specs import model_arguments, release_memory, short_name
from humpback_trl.modeling import load_model
from humpback_trl.pairs import load_table
from humpback_trl.scoring import ScoreCue, last_logits, option_cue, split_at_prefix
from humpback_trl.shards import run_sharded

logger = logging.getLogger(__name__)

BUNDLED_EVAL_SET = "builtin:eval"
OPTIONS = ("A", "B")
JUDGE_CUE = "Better response:"
JUDGE_PROMPT = (
    "You are comparing two responses to the same instruction. Decide which response is the more helpful, accurate, "
    "complete and clearly written answer to the instruction. The order of the responses and their length must not "
    "affect your decision. Reply with the letter of the better response: A or B.\n\n"
    "### Instruction:\n{instruction}\n\n### Response A:\n{a}\n\n### Response B:\n{b}"
)
Z_95 = 1.959964


@dataclass
class EvalArguments:
    models: list[str] = field(
        default_factory=list,
        metadata={"help": "Models to compare: adapter folders (M0, M1, ...), model folders or Hub ids."},
    )
    model_names: list[str] = field(
        default_factory=list, metadata={"help": "Display names, one per model (default: the folder or repo name)."}
    )
    reference: str | None = field(
        default=None, metadata={"help": "The model (name or path) the others are compared with; default the first."}
    )
    judge: str | None = field(
        default=None,
        metadata={"help": "Judge model (adapter, folder or Hub id); default the last model given (the strongest)."},
    )
    instructions: str = field(
        default=BUNDLED_EVAL_SET,
        metadata={"help": "builtin:eval (bundled), a local file or a Hub dataset with an `instruction` column."},
    )
    instructions_split: str = field(default="train", metadata={"help": "Split of a Hub dataset (alpaca_eval: eval)."})
    instructions_config: str | None = field(default=None, metadata={"help": "Config of a Hub dataset."})
    instruction_column: str = field(default="instruction", metadata={"help": "Column of the instruction set."})
    max_instructions: int | None = field(default=None, metadata={"help": "Use only the first N instructions."})
    output_dir: str = field(
        default="outputs/eval", metadata={"help": "report.json / .md, winrate.png, judgments, model_outputs/."}
    )
    tags: str = field(default="both", metadata={"help": "Source tags for adapters: both | seed | augmented | none."})
    greedy: bool = field(default=True, metadata={"help": "Greedy answers (false: nucleus sampling)."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature when greedy is false."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling top-p when greedy is false."})
    max_new_tokens: int = field(default=512, metadata={"help": "Answer length cap."})
    token_budget: int = field(default=16384, metadata={"help": "Tokens per generation batch."})
    judge_batch_size: int = field(default=4, metadata={"help": "Judge prompts per forward pass."})
    shard_size: int = field(default=64, metadata={"help": "Rows per resumable shard."})
    dtype: str = field(
        default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU), bfloat16, float16 or float32."}
    )
    load_in_4bit: bool = field(default=False, metadata={"help": "Load every model in 4-bit nf4 (bitsandbytes)."})

    def __post_init__(self) -> None:
        self.models = [self.models] if isinstance(self.models, str) else list(self.models)
        if len(self.models) < 2:
            raise ValueError(f"--models needs at least two models to compare, got {self.models}")
        if self.model_names and len(self.model_names) != len(self.models):
            raise ValueError(
                f"--model_names gives {len(self.model_names)} names for {len(self.models)} --models; give one each"
            )
        self.model_names = list(self.model_names) or [short_name(model) for model in self.models]
        unsafe = [name for name in self.model_names if not name or "/" in name or name.startswith(".")]
        if unsafe:
            raise ValueError(f"Model names name files: {unsafe} cannot be file names; set --model_names")
        if len(set(self.model_names)) != len(self.model_names):
            raise ValueError(f"Model names must be distinct, got {self.model_names}; set --model_names")
        if self.tags not in TAG_CHOICES:
            raise ValueError(f"tags must be one of {sorted(TAG_CHOICES)}, got {self.tags!r}")
        if self.reference is not None and self.reference not in (*self.model_names, *self.models):
            raise ValueError(f"--reference {self.reference!r} is none of the models {self.model_names}")

    @property
    def reference_name(self) -> str:
        if self.reference is None:
            return self.model_names[0]
        return (
            self.reference
            if self.reference in self.model_names
            else self.model_names[self.models.index(self.reference)]
        )

    @property
    def judge_model(self) -> str:
        return self.judge or self.models[-1]

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.temperature, self.top_p, self.max_new_tokens, do_sample=not self.greedy)


def load_instructions(args: EvalArguments) -> list[dict[str, str]]:
    """Rows `{instruction, dataset}`: the set's own `dataset` column where it has one (AlpacaEval's does), else the
    set's name."""
    table = load_table(args.instructions, split=args.instructions_split, config_name=args.instructions_config)
    if args.instruction_column not in table.column_names:
        raise KeyError(
            f"{args.instructions}: no column {args.instruction_column!r}; its columns are {table.column_names}. "
            "Set --instruction_column."
        )
    if args.max_instructions is not None:
        table = table.select(range(min(args.max_instructions, len(table))))
    datasets = table["dataset"] if "dataset" in table.column_names else [args.instructions] * len(table)
    rows = []
    for index, (text, dataset) in enumerate(zip(table[args.instruction_column], datasets, strict=True)):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{args.instructions}, row {index}: empty {args.instruction_column!r}")
        rows.append({"instruction": text, "dataset": dataset or args.instructions})
    return rows


def answer_prompts(name: str, instructions: Sequence[str], args: EvalArguments):
    """The model and tokenizer, and each instruction's prompt: an adapter's training format with its tags (as
    `humpback chat`), else the model's own chat template."""
    spec = model_arguments(name, args.dtype, args.load_in_4bit)
    if spec.adapter:
        bot = load_humpback(name, load_in_4bit=args.load_in_4bit, tags=args.tags, dtype=args.dtype)
        return bot.model, bot.tokenizer, [bot.prompt(text) for text in instructions]
    model, tokenizer = load_model(spec)
    prompts = [
        render(tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True) for text in instructions
    ]
    return model, tokenizer, prompts


def answer(name: str, display: str, instructions: Sequence[str], args: EvalArguments) -> list[str]:
    """One model's answers, in instruction order (resumable under `output_dir/answers/<name>`)."""
    model, tokenizer, prompts = answer_prompts(name, instructions, args)
    sampling = args.sampling

    def work(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        outputs = generate(
            model, tokenizer, [row["prompt"] for row in rows], sampling, args.token_budget, show_progress=False
        )
        return [{"id": row["id"], "output": output} for row, output in zip(rows, outputs, strict=True)]

    done = run_sharded(
        [{"id": str(i), "prompt": prompt} for i, prompt in enumerate(prompts)],
        work,
        Path(args.output_dir) / "answers" / display,
        shard_size=args.shard_size,
        key="id",
        desc=f"Answering with {display}",
        job={"model": name, "tags": args.tags, "sampling": vars(sampling)},
    )
    return list(done["output"])


def alpaca_eval_outputs(
    instructions: Sequence[Mapping[str, str]], outputs: Sequence[str], generator: str
) -> list[dict[str, str]]:
    """AlpacaEval's `model_outputs` records, in instruction order."""
    return [
        {"instruction": row["instruction"], "output": output, "generator": generator, "dataset": row["dataset"]}
        for row, output in zip(instructions, outputs, strict=True)
    ]


def judge_cue(tokenizer: PreTrainedTokenizerBase) -> ScoreCue:
    context = render(tokenizer, [{"role": "user", "content": JUDGE_PROMPT}], add_generation_prompt=True)
    return option_cue(tokenizer, context, JUDGE_CUE, OPTIONS)


def judge_prompt(tokenizer: PreTrainedTokenizerBase, cue: ScoreCue, instruction: str, a: str, b: str) -> str:
    content = JUDGE_PROMPT.format(instruction=instruction, a=a, b=b)
    return render(tokenizer, [{"role": "user", "content": content}], add_generation_prompt=True) + cue.text


def judge_prefix_ids(tokenizer: PreTrainedTokenizerBase, cue: ScoreCue) -> list[int]:
    """The tokens every judge prompt starts with (system block, user header, the judging instructions): the longest
    common token prefix of two prompts whose instructions differ, since the tokens before the instruction can merge
    with it (as for the rubric, `scoring.rubric_prefix_ids`)."""
    first, second = (encode(tokenizer, judge_prompt(tokenizer, cue, text, "x", "y")) for text in ("Alpha", "Zulu"))
    length = 0
    while length < min(len(first), len(second)) and first[length] == second[length]:
        length += 1
    return first[:length]


def option_probabilities(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    cue: ScoreCue,
    batch_size: int,
    prefix_cache: bool = True,
) -> list[tuple[float, float]]:
    """p("A") and p("B") under the judge's full next-token distribution after each prompt, in input order.

    With `prefix_cache`, the judging instructions every prompt starts with are run once and their KV cache reused:
    with short answers they are about half of each prompt's tokens."""
    encoded = [encode(tokenizer, prompt) for prompt in prompts]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    option_ids = list(cue.digit_ids)
    found: list[tuple[float, float]] = [(0.0, 0.0)] * len(encoded)
    prefix_ids = judge_prefix_ids(tokenizer, cue) if prefix_cache else []
    suffixes = split_at_prefix(prefix_ids, encoded) if prefix_ids else [None] * len(encoded)
    with torch.inference_mode():
        prefix = None
        if any(suffix is not None for suffix in suffixes):
            # use_cache explicitly: a model fresh from training with gradient checkpointing has it off.
            output = model(input_ids=torch.tensor([prefix_ids], device=model.device), use_cache=True, logits_to_keep=1)
            prefix = (prefix_ids, getattr(output, CACHE_ARGUMENT))
        cached = [i for i, suffix in enumerate(suffixes) if suffix is not None]
        plain = [i for i, suffix in enumerate(suffixes) if suffix is None]
        for indices, rows, shared in ((cached, suffixes, prefix), (plain, encoded, None)):
            # Similar lengths share a batch, so little of each forward pass is padding.
            order = sorted(indices, key=lambda i: len(rows[i]), reverse=True)
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                logits = last_logits(model, [rows[i] for i in batch], pad_id, shared)
                probs = torch.softmax(logits, dim=-1)[:, option_ids].tolist()
                for index, (p_a, p_b) in zip(batch, probs, strict=True):
                    found[index] = (p_a, p_b)
    return found


def comparisons(
    instructions: Sequence[Mapping[str, str]], answers: Mapping[str, Sequence[str]]
) -> list[dict[str, Any]]:
    """One row per (instruction, model pair, order) whose answers differ: A is `first`, B is `second`."""
    rows = []
    for a, b in itertools.combinations(answers, 2):
        for index, row in enumerate(instructions):
            if answers[a][index] == answers[b][index]:
                continue
            for first, second in ((a, b), (b, a)):
                rows.append(
                    {"id": f"{index}|{a}|{b}|{first}", "index": index, "first": first, "second": second,
                     "instruction": row["instruction"]}
                )  # fmt: skip
    return rows


def judge(
    name: str, rows: Sequence[dict[str, Any]], answers: Mapping[str, Sequence[str]], args: EvalArguments
) -> dict[str, tuple[float, float]]:
    """Judge probabilities (p_A, p_B) per comparison id (resumable under `output_dir/judgments`)."""
    if not rows:
        return {}
    model, tokenizer = load_model(model_arguments(name, args.dtype, args.load_in_4bit))
    cue = judge_cue(tokenizer)

    def work(shard: list[dict[str, Any]]) -> list[dict[str, Any]]:
        prompts = [
            judge_prompt(tokenizer, cue, row["instruction"], answers[row["first"]][row["index"]],
                         answers[row["second"]][row["index"]])
            for row in shard
        ]  # fmt: skip
        probs = option_probabilities(model, tokenizer, prompts, cue, args.judge_batch_size)
        return [{"id": row["id"], "p_a": p_a, "p_b": p_b} for row, (p_a, p_b) in zip(shard, probs, strict=True)]

    done = run_sharded(
        rows,
        work,
        Path(args.output_dir) / "judgments",
        shard_size=args.shard_size,
        key="id",
        desc=f"Judging with {short_name(name)}",
        # The answers' digest: judgments of other answers (another max_new_tokens) are never taken as finished.
        job={"judge": name, "answers_sha256": hashlib.sha256(json.dumps(answers).encode()).hexdigest()[:16]},
    )
    return {row["id"]: (row["p_a"], row["p_b"]) for row in done}


def preference(p_a: float, p_b: float) -> float:
    """p(first is better) renormalised over the two options; 0.5 when the judge put no mass on either."""
    total = p_a + p_b
    return p_a / total if total > 0 else 0.5


def verdict(prefer_a_first: float, prefer_a_second: float) -> int:
    """+1: model a wins (both orders prefer it), -1: model b wins, 0: tie (the orders disagree or are undecided).

    `prefer_a_first` is p(a better) with a shown as A; `prefer_a_second` the same with a shown as B."""
    if prefer_a_first > 0.5 and prefer_a_second > 0.5:
        return 1
    if prefer_a_first < 0.5 and prefer_a_second < 0.5:
        return -1
    return 0


def outcomes(
    instructions: Sequence[Mapping[str, str]],
    answers: Mapping[str, Sequence[str]],
    probabilities: Mapping[str, tuple[float, float]],
) -> list[dict[str, Any]]:
    """One record per (model pair, instruction): both orders' raw probabilities and the verdict for `model_a`."""
    records = []
    for a, b in itertools.combinations(answers, 2):
        for index, row in enumerate(instructions):
            record: dict[str, Any] = {"index": index, "instruction": row["instruction"], "model_a": a, "model_b": b}
            if answers[a][index] == answers[b][index]:
                records.append({**record, "identical": True, "verdict": 0})
                continue
            first = probabilities[f"{index}|{a}|{b}|{a}"]
            second = probabilities[f"{index}|{a}|{b}|{b}"]
            prefer_first, prefer_second = preference(*first), 1 - preference(*second)
            records.append(
                {**record, "identical": False, "a_first": {"p_a": first[0], "p_b": first[1]},
                 "b_first": {"p_a": second[0], "p_b": second[1]}, "prefer_a_when_first": prefer_first,
                 "prefer_a_when_second": prefer_second, "verdict": verdict(prefer_first, prefer_second)}
            )  # fmt: skip
    return records


def win_rate(wins: int, ties: int, losses: int) -> dict[str, float]:
    """(wins + ties / 2) / n with a 95% normal interval of the mean per-instruction outcome (1, 0.5, 0), clipped
    to [0, 1]."""
    n = wins + ties + losses
    if not n:
        return {"win_rate": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    rate = (wins + ties / 2) / n
    variance = (wins * (1 - rate) ** 2 + ties * (0.5 - rate) ** 2 + losses * rate**2) / n
    half = Z_95 * math.sqrt(variance / n)
    return {
        "win_rate": round(rate, 4),
        "ci_low": round(max(0.0, rate - half), 4),
        "ci_high": round(min(1.0, rate + half), 4),
    }


def pair_counts(records: Sequence[Mapping[str, Any]], model: str, other: str) -> dict[str, int]:
    """Wins / ties / losses of `model` against `other` over the records of that pair."""
    counts = {"wins": 0, "ties": 0, "losses": 0}
    for record in records:
        if {record["model_a"], record["model_b"]} != {model, other}:
            continue
        signed = record["verdict"] if record["model_a"] == model else -record["verdict"]
        counts[{1: "wins", 0: "ties", -1: "losses"}[signed]] += 1
    return counts


def consistency(records: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Position consistency (both orders pick the same answer) and how often the first-shown answer is preferred,
    over the judged (non-identical) records."""
    judged = [r for r in records if not r["identical"]]
    if not judged:
        return {"position_consistency": None, "first_position_rate": None}
    consistent = sum(1 for r in judged if r["verdict"] != 0)
    first = sum((r["prefer_a_when_first"] > 0.5) + (r["prefer_a_when_second"] < 0.5) for r in judged)
    return {
        "position_consistency": round(consistent / len(judged), 4),
        "first_position_rate": round(first / (2 * len(judged)), 4),
    }


def mean_length(texts: Sequence[str]) -> float:
    return round(statistics.fmean(len(text) for text in texts), 1) if texts else 0.0


def summarize(
    records: Sequence[Mapping[str, Any]], answers: Mapping[str, Sequence[str]], reference: str
) -> dict[str, Any]:
    """The table (each model against the reference) and every pair's counts and position consistency."""
    table = []
    for model in answers:
        if model == reference:
            continue
        counts = pair_counts(records, model, reference)
        pair = [r for r in records if {r["model_a"], r["model_b"]} == {model, reference}]
        table.append(
            {"model": model, "reference": reference, **counts, "n": sum(counts.values()),
             **win_rate(**counts), **consistency(pair), "mean_length": mean_length(answers[model]),
             "reference_mean_length": mean_length(answers[reference])}
        )  # fmt: skip
    pairs = [
        {"model_a": a, "model_b": b, **pair_counts(records, a, b),
         **consistency([r for r in records if (r["model_a"], r["model_b"]) == (a, b)])}
        for a, b in itertools.combinations(answers, 2)
    ]  # fmt: skip
    return {
        "table": table,
        "pairs": pairs,
        **consistency(records),
        "mean_length": {model: mean_length(texts) for model, texts in answers.items()},
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table_markdown(table: Sequence[Mapping[str, Any]]) -> list[str]:
    """The win / tie / loss table (report.md lines; the loop's report embeds it)."""
    lines = [
        "| model | vs | win | tie | loss | win rate (95% CI) | consistency | mean length (chars) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        lines.append(
            f"| {row['model']} | {row['reference']} | {row['wins']} | {row['ties']} | {row['losses']} | "
            f"{row['win_rate']:.2f} ({row['ci_low']:.2f}-{row['ci_high']:.2f}) | {_fmt(row['position_consistency'])} "
            f"| {row['mean_length']:.0f} (ref {row['reference_mean_length']:.0f}) |"
        )
    return lines


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """What was compared and how, the judge's position bias, and the table (the loop's report embeds these)."""
    return [
        f"{report['instructions_count']} instructions from `{report['instructions']}`; judge `{report['judge']}` "
        f"(both orders, a win only when both agree); reference `{report['reference']}`.",
        f"Position consistency of the judge: {_fmt(report['position_consistency'])}; first-shown answer preferred "
        f"in {_fmt(report['first_position_rate'])} of verdicts.",
        *([f"Note: the judge is one of the compared models ({report['judge_is_compared']}): expect it to favour "
           "its own answers."] if report.get("judge_is_compared") else []),
        "",
        *table_markdown(report["table"]),
    ]  # fmt: skip


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
    records: Sequence[Mapping[str, Any]],
    instructions: Sequence[Mapping[str, str]],
    answers: Mapping[str, Sequence[str]],
    output_dir: Path,
) -> None:
    outputs_dir = output_dir / "model_outputs"
    outputs_dir.mkdir(parents=True, exist_ok=True)
    for name, texts in answers.items():
        records_json = alpaca_eval_outputs(instructions, texts, name)
        Path(report["model_outputs"][name]).write_text(
            json.dumps(records_json, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    with (output_dir / "judgments.jsonl").open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    (output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (output_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    if report["table"]:
        plot(report["table"], output_dir / "winrate.png")


def evaluate(args: EvalArguments) -> dict[str, Any]:
    """Answer, judge, and write `output_dir`: report.json (its "table" one row per model against the reference),
    report.md, winrate.png, judgments.jsonl and model_outputs/<name>.json. Returns the report on every process."""
    output_dir = Path(args.output_dir)
    instructions = load_instructions(args)
    texts = [row["instruction"] for row in instructions]
    answers: dict[str, list[str]] = {}
    for name, display in zip(args.models, args.model_names, strict=True):
        answers[display] = answer(name, display, texts, args)
        release_memory()  # the model `answer` loaded, before the next one loads
    probabilities = judge(args.judge_model, comparisons(instructions, answers), answers, args)
    release_memory()
    records = outcomes(instructions, answers, probabilities)
    compared = [d for n, d in zip(args.models, args.model_names, strict=True) if n == args.judge_model]
    report = {
        "instructions": args.instructions,
        "instructions_count": len(instructions),
        "judge": args.judge_model,
        "judge_is_compared": compared[0] if compared else None,
        "reference": args.reference_name,
        "models": dict(zip(args.model_names, args.models, strict=True)),
        "sampling": vars(args.sampling),
        "tags": args.tags,
        **summarize(records, answers, args.reference_name),
        "model_outputs": {name: str(output_dir / "model_outputs" / f"{name}.json") for name in answers},
    }
    state = PartialState()
    if state.is_main_process:
        write_files(report, records, instructions, answers, output_dir)
    state.wait_for_everyone()
    return report
