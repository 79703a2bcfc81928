"""Back-and-forth translation (Nguyen et al., EMNLP Findings 2024, arXiv 2408.04614): after backtranslation and
curation, an aligned model rewrites each kept output as an assistant's answer to its instruction, given the original
output as its source; the rewrites are checked against that source before any of them trains a model.

    humpback rewrite --config recipes/quickstart/rewrite.yaml --pairs outputs/quickstart/curate-1 \
        --adapter outputs/quickstart/m0 --rewrite_model builtin:smollm2-135m-instruct

A rewrite is the writer's own text, and a model over-trusts high-probability text of its own, so a self-judge will
like it: every rewrite is checked against its source, not only scored.
- likelihood (`pmi`): the mean log-probability per token of the rewrite under the scorer with the instruction and the
  source as the user turn, minus the same with the instruction alone: how much the source explains the rewrite;
- lexical (`lexical`): the share of the rewrite's numbers and content words found in the source (or the instruction,
  whose words an answer may repeat); a number found in neither is an invented fact (`new_numbers`).
A rewrite under a floor is rejected, counted and kept with its reason in rewrites.jsonl; `on_unfaithful` then keeps
the original pair or drops it. The rewritten pairs are scored by the curation method (`curation.score_rows`) like
any candidate. One scorer serves both, on `curation_engine` (`engines.Engine`: the likelihood check is its
`continuation_logprobs`); the check is likelihood scoring, so with an adapter `auto` scores on transformers
(`engines.choose_engine`).

Two resumable sharded phases (`shards.run_sharded`): `generation/` (the writer's rewrites) and `checks/` (the
scorer's figures); the floors apply after both, so changing a floor recomputes nothing. Outputs: rewrites.jsonl
(per pair: instruction, original output, rewrite, both figures, the decision and its reason), rewritten.jsonl (the
pairs that replace the input: accepted rewrites, plus the originals of rejected ones under keep_original),
accepted.jsonl (the accepted rewrites alone, which `rewrite: add` trains on beside the input), report and card.
"""

from __future__ import annotations

import logging
import re
import statistics
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, List, Value
from huggingface_hub import DatasetCard
from transformers import PreTrainedTokenizerBase, set_seed

from humpback_trl.chat_template import Message, render
from humpback_trl.configs import DEFAULT_REWRITE_PROMPT as DEFAULT_REWRITE_PROMPT  # public: the writer's default
from humpback_trl.configs import RewriteArguments
from humpback_trl.curation import CurationSettings, score_rows
from humpback_trl.engines import Engine, choose_engine, generate, load_engine
from humpback_trl.errors import UserError
from humpback_trl.generation import resolve_engine
from humpback_trl.hub import candidates_repo_id, curated_repo_id, dataset_card
from humpback_trl.likelihood import encode_rows
from humpback_trl.model_specs import model_arguments
from humpback_trl.modeling import InferenceModelArguments, load_tokenizer
from humpback_trl.pairs import PAIR_FEATURES, load_pairs, make_pair
from humpback_trl.paths import public_name
from humpback_trl.reports import EXCERPT_CHARS, length_stats
from humpback_trl.scoring import ScoreResult
from humpback_trl.shards import run_sharded
from humpback_trl.stage import StageOutputs, finish_stage
from humpback_trl.stage_outputs import CURATE, REWRITE

logger = logging.getLogger(__name__)

# The user turn the likelihood check conditions on: the instruction, then the source. Without the source it is the
# instruction alone, the user turn every forward model is trained and prompted with.
SOURCE_CONTEXT = "{instruction}\n\n{source}"
# Why a rewrite was rejected, in the order the checks run: the first failed one is the pair's reason.
REASONS = ("empty_rewrite", "new_numbers", "lexical", "pmi", "score")
UNFAITHFUL = REASONS[:-1]  # a rewrite rejected for its curation score alone may be faithful
REWRITE_SUFFIX = "#rewrite"  # appended to a rewritten pair's source_id, so it and its original can train together
EXAMPLES = 3

NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
WORD = re.compile(r"[^\W\d_]+")
# Function words carry no fact: a rewrite may use any of them without them counting for or against it.
STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being below between
    both but by can could did do does doing down during each either else even ever every few for from further had has
    have having he her here hers herself him himself his how however i if in into is it its itself just let like may
    me might more most much must my myself no nor not now of off often on once one only or other our ours ourselves
    out over own per rather same shall she should since so some such than that the their theirs them themselves then
    there these they this those though through thus to too under until up upon us very was we were what when where
    whether which while who whom whose why will with within without would yet you your yours yourself yourselves
    here's it's that's there's what's let's""".split()
)

GENERATED_FEATURES = Features({**PAIR_FEATURES, "rewrite": Value("string")})
# The figures of the faithfulness checks: in the checks' shards and, as they are, in every rewrite's row.
CHECK_FIGURES = {
    "lp_with_source": Value("float64"),
    "lp_without_source": Value("float64"),
    "pmi": Value("float64"),
    "lexical": Value("float64"),
    "new_numbers": List(Value("string")),
    "rewrite_score": Value("float64"),
    "rewrite_score_mass": Value("float64"),
}
CHECK_FEATURES = Features({**GENERATED_FEATURES, **CHECK_FIGURES, "rewrite_reasoning": Value("string")})
REWRITE_FEATURES = Features(
    {
        "instruction": Value("string"),
        "original_output": Value("string"),
        "rewrite": Value("string"),
        "source": Value("string"),
        "source_id": Value("string"),
        "original_score": Value("float64"),
        **CHECK_FIGURES,
        "decision": Value("string"),
        "reason": Value("string"),
    }
)


# ---- The lexical check ---------------------------------------------------------------------------------------------


def numbers(text: str) -> list[str]:
    """Every number of `text` as written, thousands separators removed ("1,024" and "1024" are one number)."""
    return [match.replace(",", "") for match in NUMBER.findall(text)]


def content_words(text: str) -> list[str]:
    """Every word of `text` in lower case, function words and single letters left out."""
    return [word for word in (match.lower() for match in WORD.findall(text)) if len(word) > 1 and word not in STOPWORDS]


@dataclass(frozen=True)
class LexicalCheck:
    share: float | None  # None: the rewrite holds no number and no content word
    new_numbers: list[str]  # distinct, in order of appearance


def lexical_check(rewrite: str, source: str, instruction: str) -> LexicalCheck:
    """The share of the rewrite's numbers and content words (each occurrence) found in the source or the
    instruction, and the distinct numbers found in neither."""
    known_numbers = set(numbers(source)) | set(numbers(instruction))
    known_words = set(content_words(source)) | set(content_words(instruction))
    rewrite_numbers, rewrite_words = numbers(rewrite), content_words(rewrite)
    found = sum(n in known_numbers for n in rewrite_numbers) + sum(w in known_words for w in rewrite_words)
    total = len(rewrite_numbers) + len(rewrite_words)
    new = list(dict.fromkeys(n for n in rewrite_numbers if n not in known_numbers))
    return LexicalCheck(found / total if total else None, new)


# ---- The likelihood check ------------------------------------------------------------------------------------------


def source_context(instruction: str, source: str) -> str:
    return SOURCE_CONTEXT.replace("{instruction}", instruction).replace("{source}", source)


def likelihood_figures(
    engine: Engine, tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict[str, Any]], batch_size: int
) -> list[dict[str, float | None]]:
    """Per row `lp_with_source`, `lp_without_source` and `pmi` (their difference) of the rewrite on `engine`;
    None for an empty rewrite, which has no token to measure."""
    figures: list[dict[str, float | None]] = [dict.fromkeys(("lp_with_source", "lp_without_source", "pmi"))] * len(rows)
    measured = [i for i, row in enumerate(rows) if row["rewrite"].strip()]
    if not measured:
        return figures
    rewrites = [rows[i]["rewrite"] for i in measured]
    contexts = [source_context(rows[i]["instruction"], rows[i]["output"]) for i in measured]
    contexts += [rows[i]["instruction"] for i in measured]
    # Both passes in one call: the engine batches them together and shares their chat header.
    found = engine.continuation_logprobs(
        tokenizer, encode_rows(tokenizer, contexts, rewrites * 2), batch_size=batch_size
    )
    with_source, without = found[: len(measured)], found[len(measured) :]
    for index, a, b in zip(measured, with_source, without, strict=True):
        figures[index] = {"lp_with_source": a.mean, "lp_without_source": b.mean, "pmi": a.mean - b.mean}
    return figures


# ---- Decisions -----------------------------------------------------------------------------------------------------


def rejection_reason(row: dict[str, Any], args: RewriteArguments) -> str:
    """The first check a rewrite fails (REASONS order), or "" when it passes them all."""
    if not row["rewrite"].strip():
        return "empty_rewrite"
    if len(row["new_numbers"]) > args.max_new_numbers:
        return "new_numbers"
    if row["lexical"] is not None and row["lexical"] < args.min_lexical:
        return "lexical"
    if row["pmi"] < args.min_pmi:
        return "pmi"
    if args.min_rewrite_score is not None and (
        row["rewrite_score"] is None or row["rewrite_score"] < args.min_rewrite_score
    ):
        return "score"
    return ""


def decide(checked: Dataset, args: RewriteArguments) -> Dataset:
    """The rewrites table: per pair the instruction, original output, rewrite, figures, decision and reason."""

    def row_decision(row: dict[str, Any]) -> dict[str, Any]:
        reason = rejection_reason(row, args)
        decision = (
            "rewritten" if not reason else ("kept_original" if args.on_unfaithful == "keep_original" else "dropped")
        )
        return {
            "instruction": row["instruction"],
            "original_output": row["output"],
            "rewrite": row["rewrite"],
            "source": row["source"],
            "source_id": row["source_id"],
            "original_score": row["score"],
            **{name: row[name] for name in CHECK_FIGURES},
            "decision": decision,
            "reason": reason,
        }

    return table([row_decision(row) for row in checked.to_list()], REWRITE_FEATURES)


def rewritten_pair(row: dict[str, Any], scorer: str, iteration: int | None) -> dict[str, Any]:
    pair = make_pair(row["instruction"], row["rewrite"], row["source"], row["source_id"] + REWRITE_SUFFIX)
    return {**pair, "score": row["rewrite_score"], "score_mass": row["rewrite_score_mass"], "scorer": scorer,
            "iteration": iteration}  # fmt: skip


def pair_files(rewrites: Dataset, originals: Dataset, scorer: str, iteration: int | None) -> tuple[Dataset, Dataset]:
    """rewritten (each input pair's replacement, in input order: its accepted rewrite or, under keep_original, the
    pair itself) and accepted (the accepted rewrites alone), both in the pair schema."""
    rewritten, accepted = [], []
    for row, original in zip(rewrites.to_list(), originals.to_list(), strict=True):
        if row["decision"] == "rewritten":
            pair = rewritten_pair(row, scorer, iteration)
            rewritten.append(pair)
            accepted.append(pair)
        elif row["decision"] == "kept_original":
            rewritten.append(original)
    return table(rewritten, PAIR_FEATURES), table(accepted, PAIR_FEATURES)


def table(rows: list[dict[str, Any]], features: Features) -> Dataset:
    # from_list of no rows would have no columns at all: an empty file must still have the schema.
    return Dataset.from_dict({name: [row[name] for row in rows] for name in features}, features=features)


# ---- Report --------------------------------------------------------------------------------------------------------


def distribution(values: Sequence[float | None]) -> dict[str, float | int]:
    """Count, mean and quantiles of the values that exist."""
    given = sorted(value for value in values if value is not None)
    if not given:
        return {"n": 0}

    def quantile(q: float) -> float:
        return round(given[min(len(given) - 1, int(q * len(given)))], 3)

    return {
        "n": len(given),
        "mean": round(statistics.fmean(given), 3),
        "min": round(given[0], 3),
        "p10": quantile(0.1),
        "median": round(statistics.median(given), 3),
        "p90": quantile(0.9),
        "max": round(given[-1], 3),
    }


def describe(stats: dict[str, float | int]) -> str:
    if not stats["n"]:
        return "none measured"
    return ", ".join(f"{name} {value}" for name, value in stats.items())


def funnel(rewrites: Dataset, rewritten: Dataset, accepted: Dataset) -> dict[str, int]:
    decisions, reasons = Counter(rewrites["decision"]), Counter(rewrites["reason"])
    return {
        "pairs in": len(rewrites),
        "rewritten": sum(bool(text.strip()) for text in rewrites["rewrite"]),
        "rejected as unfaithful": sum(reasons[reason] for reason in UNFAITHFUL),
        **{f"rejected: {reason}": reasons[reason] for reason in REASONS},
        "kept (rewrites)": len(accepted),
        "kept (originals of rejected rewrites)": decisions["kept_original"],
        "dropped": decisions["dropped"],
        "pairs out": len(rewritten),
    }


def examples(rewrites: Dataset, n: int = EXAMPLES) -> list[dict[str, str]]:
    """Up to n pairs, accepted rewrites first, each as the start of its source and of its rewrite."""
    order = sorted(range(len(rewrites)), key=lambda i: rewrites[i]["decision"] != "rewritten")[:n]
    return [
        {
            "instruction": rewrites[i]["instruction"],
            "source (start)": rewrites[i]["original_output"][:EXCERPT_CHARS],
            "rewrite (start)": rewrites[i]["rewrite"][:EXCERPT_CHARS],
            "decision": rewrites[i]["decision"] + (f" ({rewrites[i]['reason']})" if rewrites[i]["reason"] else ""),
        }
        for i in order
    ]


def rewrite_report(
    rewrites: Dataset, rewritten: Dataset, accepted: Dataset, args: RewriteArguments, writer: str, scorer: str
) -> dict[str, Any]:
    """The funnel, lengths before and after, both figures' distributions and examples. Summary lines are strings so
    that report.md shows them; the same figures are structured under `distributions` and `lengths`."""
    counts = funnel(rewrites, rewritten, accepted)
    kept = rewrites.filter(
        lambda decisions: [d == "rewritten" for d in decisions], input_columns="decision", batched=True
    )
    lengths = {
        "original outputs (chars)": length_stats(rewrites["original_output"]),
        "rewrites (chars)": length_stats(rewrites["rewrite"]),
        "kept rewrites (chars)": length_stats(kept["rewrite"]),
        "their originals (chars)": length_stats(kept["original_output"]),
    }
    distributions = {
        "pmi": distribution(rewrites["pmi"]),
        "lexical": distribution(rewrites["lexical"]),
        "rewrite_score": distribution(rewrites["rewrite_score"]),
        "original_score": distribution(rewrites["original_score"]),
    }
    report: dict[str, Any] = {
        **counts,
        "writer": writer,
        "scorer": scorer,
        "on_unfaithful": args.on_unfaithful,
        "floors": f"pmi >= {args.min_pmi}, lexical >= {args.min_lexical}, new numbers <= {args.max_new_numbers}"
        + (f", rewrite score >= {args.min_rewrite_score}" if args.min_rewrite_score is not None else ""),
        "length before -> after (kept rewrites, chars)": f"{lengths['their originals (chars)']['mean']:.0f} -> "
        f"{lengths['kept rewrites (chars)']['mean']:.0f}",
        "pmi per token (nats)": describe(distributions["pmi"]),
        "lexical share": describe(distributions["lexical"]),
        "curation score of the rewrites": describe(distributions["rewrite_score"]),
        "curation score of the originals": describe(distributions["original_score"]),
    }
    shown = examples(rewrites)
    for index, example in enumerate(shown, start=1):
        report[f"example {index}"] = " | ".join(f"{name}: {' '.join(text.split())}" for name, text in example.items())
    return {**report, "lengths": lengths, "distributions": distributions, "examples": shown}


def funnel_line(report: dict[str, Any]) -> str:
    """One line of a rewrite stage's funnel, for the loop's report."""
    reasons = ", ".join(f"{r} {report['rejected: ' + r]}" for r in UNFAITHFUL if report["rejected: " + r])
    score = f", {report['rejected: score']} rejected for their score" if report["rejected: score"] else ""
    return (
        f"{report['pairs in']} pairs in, {report['rewritten']} rewritten, {report['rejected as unfaithful']} rejected "
        f"as unfaithful ({reasons or 'none'}){score}, {report['kept (rewrites)']} rewrites kept, "
        f"{report['kept (originals of rejected rewrites)']} originals kept, {report['dropped']} dropped -> "
        f"{report['pairs out']} pairs"
    )


# ---- Stage ---------------------------------------------------------------------------------------------------------


def rewritten_repo_id(prefix: str, iteration: int | None) -> str:
    return f"{prefix}-rewritten" + (f"-{iteration}" if iteration is not None else "")


def load_input_pairs(args: RewriteArguments) -> Dataset:
    """The pairs to rewrite: a curate stage's folder (its <curated_split>.jsonl), a curated/ folder or Hub data set
    (its split curated_split), else any pair file."""
    split_file = CURATE.split_files.get(args.curated_split)
    local = Path(args.pairs) / split_file if split_file else None
    # The jsonl, not curated/: an empty split (a weak scorer's A5) reads back from save_to_disk as an error.
    name = str(local) if local and local.is_file() else args.pairs
    pairs, _ = load_pairs(name, default_source="augmented", split=args.curated_split)
    if args.max_pairs is not None:
        pairs = pairs.select(range(min(args.max_pairs, len(pairs))))
    return pairs


def writer_arguments(args: RewriteArguments, model_args: InferenceModelArguments) -> InferenceModelArguments:
    if args.rewrite_model is None:
        return model_args
    return model_arguments(args.rewrite_model, dtype=model_args.dtype, load_in_4bit=model_args.load_in_4bit)


def writer_messages(row: dict[str, Any], args: RewriteArguments) -> list[Message]:
    prompt = args.rewrite_prompt.replace("{instruction}", row["instruction"]).replace("{source}", row["output"])
    system = [{"role": "system", "content": args.rewrite_system_prompt}] if args.rewrite_system_prompt else []
    return [*system, {"role": "user", "content": prompt}]


def writer_job(args: RewriteArguments, writer_args: InferenceModelArguments) -> dict[str, Any]:
    """What shapes the rewrites: shards written for another writer, prompt or sampling are never reused."""
    return {
        "writer": vars(writer_args),
        "engine": resolve_engine(args.engine),
        "sampling": vars(args.sampling),
        "seed": args.seed,
        "prompt": args.rewrite_prompt,
        "system": args.rewrite_system_prompt,
    }


def write_rewrites(pairs: Dataset, args: RewriteArguments, writer_args: InferenceModelArguments) -> Dataset:
    """Phase 1: the writer rewrites every pair's output, shard by shard (resumable), then gives its memory back."""
    tokenizer = load_tokenizer(writer_args)
    engine = load_engine(writer_args, args.engine)
    sampling = args.sampling

    def work(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # Seeded by the shard's first key: a resumed shard samples what an uninterrupted run would have.
        seed = args.seed + zlib.crc32(rows[0]["source_id"].encode())
        set_seed(seed)
        prompts = [render(tokenizer, writer_messages(row, args), True) for row in rows]
        texts = generate(engine, tokenizer, prompts, sampling, args.token_budget, None, seed)
        return [{**row, "rewrite": text} for row, text in zip(rows, texts, strict=True)]

    try:
        return run_sharded(
            pairs,
            work,
            Path(args.output_dir) / "generation",
            shard_size=args.shard_size,
            key="source_id",
            desc="Rewriting",
            features=GENERATED_FEATURES,
            job=writer_job(args, writer_args),
        )
    finally:
        engine.release()


def checked_row(row: dict[str, Any], figures: dict[str, float | None], score: ScoreResult | None) -> dict[str, Any]:
    lexical = lexical_check(row["rewrite"], row["output"], row["instruction"])
    return {
        **row,
        **figures,
        "lexical": lexical.share,
        "new_numbers": lexical.new_numbers,
        "rewrite_score": score.score if score else None,
        "rewrite_score_mass": score.mass if score else None,
        "rewrite_reasoning": score.reasoning if score else None,
    }


def scorer_engine(model_args: InferenceModelArguments, settings: CurationSettings) -> str:
    """curation_engine, with `choose_engine`'s rule for likelihood scoring with an adapter: the likelihood check
    always runs."""
    return choose_engine(settings.curation_engine, model_args, likelihood=True, option="curation_engine")


def check_rewrites(
    generated: Dataset,
    args: RewriteArguments,
    model_args: InferenceModelArguments,
    settings: CurationSettings,
    job: dict[str, Any],
) -> Dataset:
    """Phase 2: the scorer measures each rewrite against its source and scores the rewritten pair with the curation
    method, shard by shard (resumable), then gives its memory back."""
    tokenizer = load_tokenizer(model_args)
    engine = load_engine(model_args, scorer_engine(model_args, settings))

    def work(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        figures = likelihood_figures(engine, tokenizer, rows, args.likelihood_batch_size)
        written = [i for i, row in enumerate(rows) if row["rewrite"].strip()]
        results = score_rows(
            engine, tokenizer, [(rows[i]["instruction"], rows[i]["rewrite"]) for i in written], settings
        )
        scores: list[ScoreResult | None] = [None] * len(rows)
        for index, result in zip(written, results, strict=True):
            scores[index] = result
        return [checked_row(*item) for item in zip(rows, figures, scores, strict=True)]

    name = model_args.adapter or model_args.model_name_or_path
    try:
        return run_sharded(
            generated,
            work,
            Path(args.output_dir) / "checks",
            shard_size=args.shard_size,
            key="source_id",
            desc=f"Checking rewrites with {str(name).split('/')[-1]}",
            features=CHECK_FEATURES,
            job={
                "scorer": vars(model_args),
                "context": SOURCE_CONTEXT,
                "mode": settings.curation_mode,
                "prompt": settings.curation_prompt,
                "max_new_tokens": settings.curation_max_new_tokens,
                "rewrites": job,
            },
        )
    finally:
        engine.release()


def rewrite(args: RewriteArguments, model_args: InferenceModelArguments, settings: CurationSettings) -> Dataset:
    """Rewrite, check, decide and write the stage's outputs; returns the rewrites table on every process."""
    if settings.curation_judges:
        raise UserError("rewrite scores with one model (model_name_or_path / adapter); leave curation_judges empty")
    scorer_engine(model_args, settings)  # refuses an engine the checks cannot run on before the writer loads
    pairs = load_input_pairs(args)
    writer_args = writer_arguments(args, model_args)
    if len(pairs):
        generated = write_rewrites(pairs, args, writer_args)
        checked = check_rewrites(generated, args, model_args, settings, writer_job(args, writer_args))
    else:
        # An empty A5 (a weak scorer) is a legitimate input in the loop: the stage writes empty files and says so.
        logger.warning("%s holds no pairs (split %r): nothing to rewrite", args.pairs, args.curated_split)
        checked = table([], CHECK_FEATURES)
    rewrites = decide(checked, args)
    writer = public_name(writer_args.adapter or writer_args.model_name_or_path)
    scorer = public_name(model_args.adapter or model_args.model_name_or_path)
    rewritten, accepted = pair_files(rewrites, pairs, scorer, args.iteration)
    report = rewrite_report(rewrites, rewritten, accepted, args, writer, scorer)
    finish_stage(rewrite_outputs(rewrites, rewritten, accepted, report, args), args.output_dir)
    logger.info("Rewrite: %s -> %s", funnel_line(report), args.output_dir)
    return rewrites


def rewrite_card(report: dict[str, Any], args: RewriteArguments) -> DatasetCard:
    prefix = args.hub_prefix
    links = {
        "rewriting model": report["writer"],
        "scoring model (faithfulness, curation score)": report["scorer"],
        "rewritten pairs (input)": public_name(args.pairs) + f" (split {args.curated_split})",
    }
    if prefix:
        links["candidates"] = candidates_repo_id(prefix)
        if args.iteration is not None:
            links["curated split"] = f"{curated_repo_id(prefix, args.iteration)} (split {args.curated_split})"
    summary = (
        "Back-and-forth translation (Nguyen et al. 2024, arXiv 2408.04614): each curated pair's output rewritten by "
        f"`{report['writer']}` as an assistant's answer to its instruction, given the original as its source. Every "
        f"rewrite was checked against its source under `{report['scorer']}`: the likelihood check (mean log-"
        "probability per token with the source in the user turn minus without it) and the lexical check (share of "
        f"its numbers and content words found in the source or instruction). Floors: {report['floors']}; a rejected "
        f"rewrite's pair was {'kept as it was' if args.on_unfaithful == 'keep_original' else 'dropped'} "
        f"(on_unfaithful: {args.on_unfaithful}). `score` is the curation method's score of the rewritten pair.\n\n"
        f"The writer's prompt:\n\n```text\n{args.rewrite_prompt}\n```"
    )
    counts = {name: value for name, value in report.items() if isinstance(value, int) and not isinstance(value, bool)}
    return dataset_card(
        title=rewritten_repo_id(prefix, args.iteration) if prefix else "humpback rewritten pairs",
        summary=summary,
        counts=counts,
        links=links,
        private=args.hub_private_repo,
    )


def rewrite_outputs(
    rewrites: Dataset, rewritten: Dataset, accepted: Dataset, report: dict[str, Any], args: RewriteArguments
) -> StageOutputs:
    return StageOutputs(
        report=report,
        title="Rewrite" + (f", iteration {args.iteration}" if args.iteration is not None else ""),
        card=rewrite_card(report, args),
        files={REWRITE.rewrites: rewrites, REWRITE.rewritten: rewritten, REWRITE.accepted: accepted},
        push=rewritten,
        hub_repo=rewritten_repo_id(args.hub_prefix, args.iteration) if args.push_to_hub and args.hub_prefix else None,
        private=args.hub_private_repo,
    )
