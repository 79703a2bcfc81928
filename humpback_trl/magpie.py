"""MAGPIE: self-synthesised instruction data from an aligned chat model (Xu et al. 2024, arXiv 2406.08464).

An aligned model given only the text its chat template puts before a user message (the pre-query template,
`magpie_template`) samples a plausible user instruction; rendering that instruction back through the template yields
a response. The stage entry point generates a data set in the pair schema (source=magpie):

    accelerate launch -m humpback_trl.scripts.magpie --config recipes/quickstart/magpie.yaml
    humpback magpie --config recipes/quickstart/magpie.yaml

Every conversation samples its instruction from the pre-query template (T=1.0, top-p=1.0 by default) and its response
through the chat template (greedy by default), for `num_turns` turns, optionally under a system prompt drawn with
weights. Generation runs in resumable shards across accelerate processes (output_dir/generation); the filters then
run in pipeline order, each counted in the funnel report, and optional self-curation scores the kept pairs with the
backtranslation rubric. Finished shards are reused as they are: change generation settings with a new output_dir or
`overwrite`. Output: magpie.jsonl (first turn as instruction/output, the whole conversation in `messages`),
report.json/.md and a dataset card README.md, pushed to `<hub_prefix>-magpie` with push_to_hub.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from accelerate import PartialState
from datasets import Dataset, Features, List, Value
from huggingface_hub import DatasetCard
from transformers import PreTrainedTokenizerBase, set_seed

from humpback_trl.chat_template import Message, render
from humpback_trl.configs import MagpieArguments
from humpback_trl.curation import CurationSettings, curate, load_scorer, scoring_engine
from humpback_trl.engines import Engine, generate, load_engine
from humpback_trl.filters import Check, exact_duplicate_check, near_duplicate_check, wrong_language
from humpback_trl.generation import SamplingConfig
from humpback_trl.hub import dataset_card
from humpback_trl.magpie_template import instruction_prompt, instruction_stop_token_ids, leak_check
from humpback_trl.modeling import InferenceModelArguments, load_tokenizer
from humpback_trl.pairs import PAIR_FEATURES, make_pair
from humpback_trl.paths import public_name
from humpback_trl.reports import subset_stats
from humpback_trl.shards import run_sharded
from humpback_trl.stage import StageOutputs, finish_stage, thinking_counts
from humpback_trl.stage_outputs import MAGPIE

logger = logging.getLogger(__name__)

# ---- Filters -------------------------------------------------------------------------------------------------------

REMOVAL_KEYS = (
    "removed_empty_instruction", "removed_too_short", "removed_too_long", "removed_template_leak",
    "removed_language", "removed_empty_response", "removed_exact_duplicate", "removed_near_duplicate",
)  # fmt: skip
COUNT_KEYS = ("generated", *REMOVAL_KEYS, "kept")
# Instructions are a few dozen words, so near-duplicates are compared on word 3-grams (the corpus uses 5-grams).
INSTRUCTION_SHINGLE = 3


def instruction_checks(args: MagpieArguments, tokenizer: PreTrainedTokenizerBase) -> list[Check]:
    """The per-instruction filters in pipeline order, as (count key, reject) pairs."""
    checks: list[Check] = [("removed_empty_instruction", lambda text: not text.strip())]
    if (low := args.min_instruction_chars) is not None:
        checks.append(("removed_too_short", lambda text: len(text.strip()) < low))
    if (high := args.max_instruction_chars) is not None:
        checks.append(("removed_too_long", lambda text: len(text.strip()) > high))
    checks.append(("removed_template_leak", leak_check(tokenizer)))
    if args.language is not None:
        checks.append(("removed_language", wrong_language(args.language)))
    return checks


def _dialogue(messages: list[Message]) -> list[Message]:
    return [message for message in messages if message["role"] != "system"]


def _turn_drop_reason(messages: list[Message], checks: list[Check]) -> str:
    """The first filter a turn fails, turn by turn; a user turn with no answer after it counts as an empty response."""
    turns = _dialogue(messages)
    for position in range(0, len(turns), 2):
        if reason := next((key for key, reject in checks if reject(turns[position]["content"])), ""):
            return reason
        answer = turns[position + 1]["content"] if position + 1 < len(turns) else ""
        if not answer.strip():
            return "removed_empty_response"
    return ""


def _first(messages: list[Message], role: str) -> str:
    return next((message["content"] for message in messages if message["role"] == role), "")


def filter_conversations(
    conversations: Sequence[list[Message]], checks: list[Check], args: MagpieArguments
) -> tuple[list[int], dict[str, int]]:
    """Indices of the conversations every filter keeps, and the funnel counts (COUNT_KEYS order, adding up).

    Each conversation counts under the first filter it fails. Deduplication runs last, on the first instruction, so
    only conversations that passed every other filter are indexed and the first of a group of duplicates is kept.
    """
    duplicate_checks: list[Check] = []
    if args.exact_dedup:
        duplicate_checks.append(("removed_exact_duplicate", exact_duplicate_check()))
    if args.near_dedup_threshold is not None:
        near = near_duplicate_check(args.near_dedup_threshold, ngram=INSTRUCTION_SHINGLE)
        duplicate_checks.append(("removed_near_duplicate", near))
    counts = {"generated": len(conversations), **dict.fromkeys(REMOVAL_KEYS, 0)}
    keep: list[int] = []
    for index, messages in enumerate(conversations):
        instruction = _first(messages, "user")
        reason = _turn_drop_reason(messages, checks) or next(
            (key for key, is_duplicate in duplicate_checks if is_duplicate(instruction)), ""
        )
        if reason:
            counts[reason] += 1
        else:
            keep.append(index)
    counts["kept"] = len(keep)
    return keep, counts


# ---- Generation ----------------------------------------------------------------------------------------------------

MAGPIE_FEATURES = Features({**PAIR_FEATURES, "messages": List({"role": Value("string"), "content": Value("string")})})

# prompts, sampling, stop ids (None: the template's end of turn and EOS) -> the generated texts
Generator = Callable[[list[str], SamplingConfig, list[int] | None], list[str]]
Row = dict[str, Any]


GENERATION_FIELDS = ("num_", "instruction_", "response_", "system_prompt", "seed", "engine")


def draw_system_prompt(args: MagpieArguments, index: int) -> str | None:
    """The system prompt of conversation `index`, drawn from a generator keyed by the seed and the index alone, so
    the draw does not depend on the number of samples, the shards or the processes."""
    if not args.system_prompts:
        return None
    rng = random.Random(f"{args.seed}:{index}")
    return rng.choices(args.system_prompts, weights=args.system_prompt_weights)[0]


def magpie_items(args: MagpieArguments) -> Dataset:
    indices = range(args.num_samples)
    return Dataset.from_dict({
        "source_id": [f"magpie:{index}" for index in indices],
        "index": list(indices),
        "system_prompt": [draw_system_prompt(args, index) for index in indices],
    })  # fmt: skip


def synthesize(
    rows: list[Row], tokenizer: PreTrainedTokenizerBase, generate_fn: Generator, args: MagpieArguments
) -> list[Row]:
    """One MAGPIE conversation per row (source_id, system_prompt): `num_turns` times, an instruction sampled from
    the pre-query template of the conversation so far, then its response through the chat template.

    Responses are nearly all the compute, so an empty instruction or one that leaks chat markup gets none and its
    conversation stops there (the filters reject it whatever else they check); so does one with an empty response.
    """
    unusable = leak_check(tokenizer)
    instruction_stops = instruction_stop_token_ids(tokenizer)
    conversations: list[list[Message]] = [
        [{"role": "system", "content": row["system_prompt"]}] if row["system_prompt"] is not None else []
        for row in rows
    ]
    active = list(range(len(rows)))
    for _ in range(args.num_turns):
        prompts = [instruction_prompt(tokenizer, rows[i]["system_prompt"], _dialogue(conversations[i])) for i in active]
        instructions = generate_fn(prompts, args.instruction_sampling, instruction_stops) if prompts else []
        for i, text in zip(active, instructions, strict=True):
            conversations[i].append({"role": "user", "content": text})
        active = [i for i, text in zip(active, instructions, strict=True) if text.strip() and not unusable(text)]
        prompts = [render(tokenizer, conversations[i], add_generation_prompt=True) for i in active]
        responses = generate_fn(prompts, args.response_sampling, None) if prompts else []
        for i, text in zip(active, responses, strict=True):
            conversations[i].append({"role": "assistant", "content": text})
        active = [i for i, text in zip(active, responses, strict=True) if text.strip()]
    return [
        {**make_pair(_first(messages, "user"), _first(messages, "assistant"), "magpie", row["source_id"]),
         "messages": messages}
        for row, messages in zip(rows, conversations, strict=True)
    ]  # fmt: skip


def make_generator(args: MagpieArguments, engine: Engine, tokenizer: PreTrainedTokenizerBase, seed: int) -> Generator:
    """Generation on the stage's engine; on vLLM request i of a call samples with `seed + i`."""
    return lambda prompts, sampling, stops: generate(
        engine, tokenizer, prompts, sampling, args.token_budget, stops, seed
    )


# ---- Stage ---------------------------------------------------------------------------------------------------------

# The `iteration` recorded on scored pairs: MAGPIE data is curated once, like the first backtranslation pool.
CURATION_ITERATION = 1


def magpie_repo_id(prefix: str) -> str:
    return f"{prefix}-magpie"


def magpie(args: MagpieArguments, model_args: InferenceModelArguments, settings: CurationSettings) -> Dataset:
    """Generate, filter (and optionally self-curate) MAGPIE conversations; returns the kept rows on every process."""
    state = PartialState()
    engine, tokenizer = load_engine(model_args, args.engine), load_tokenizer(model_args)
    # Built before generation, so that a missing optional dependency fails before hours of work.
    checks = instruction_checks(args, tokenizer)

    def work(rows: list[Row]) -> list[Row]:
        # Seeded per shard, so a shard samples the same text whichever process runs it, resumed or not; identical
        # prompts still sample different instructions, each row drawing its own tokens.
        seed = args.seed + rows[0]["index"]
        set_seed(seed)
        return synthesize(rows, tokenizer, make_generator(args, engine, tokenizer, seed), args)

    generated = run_sharded(
        magpie_items(args),
        work,
        Path(args.output_dir) / "generation",
        shard_size=args.shard_size,
        key="source_id",
        desc="MAGPIE conversations",
        overwrite=args.overwrite,
        features=MAGPIE_FEATURES,
        # Settings that shape the conversations; the filters run after the shards and may change freely.
        job={
            "model": vars(model_args),
            **{k: v for k, v in vars(args).items() if k.startswith(GENERATION_FIELDS)},
            "engine": engine.name,
        },
    )
    keep, counts = filter_conversations(generated["messages"], checks, args)
    kept = generated.select(keep)
    writer = public_name(model_args.adapter or model_args.model_name_or_path)
    # Taken before curation, whose own report would otherwise take them: what MAGPIE generated, at the top level of
    # its report as in every stage's (on every process: gathering is collective).
    thinking = thinking_counts()
    summary = None
    if args.curate and not len(kept):
        logger.warning("MAGPIE: no conversation survived the filters, so there is nothing to curate")
    elif args.curate:
        # The curation engine may differ from the generation one: reuse the loaded model only when it matches.
        if engine.name != scoring_engine(model_args, settings):
            engine.release()
            engine = load_scorer(model_args, settings)[0]
        hub_repo = f"{magpie_repo_id(args.hub_prefix)}-curated" if args.push_to_hub and args.hub_prefix else None
        _, summary = curate(
            engine, tokenizer, kept.select_columns(list(PAIR_FEATURES)), settings, iteration=CURATION_ITERATION,
            scorer=writer, output_dir=Path(args.output_dir) / "curation", hub_repo=hub_repo,
            private=args.hub_private_repo,
        )  # fmt: skip
    finish_stage(magpie_outputs(kept, counts, summary, args, writer, thinking), args.output_dir)
    pairs = Path(args.output_dir) / MAGPIE.pairs
    state.print(f"MAGPIE: kept {counts['kept']} of {counts['generated']} conversations -> {pairs}")
    return kept


def magpie_card(counts: dict[str, int], args: MagpieArguments, writer: str) -> DatasetCard:
    response = (
        f"T={args.response_temperature}, top-p={args.response_top_p}" if args.response_temperature > 0 else "greedy"
    )
    systems = (
        f"{len(args.system_prompts)} system prompts drawn with weights {args.system_prompt_weights or 'uniform'}"
        if args.system_prompts
        else "the template's default system block"
    )
    dedup = ["exact"] if args.exact_dedup else []
    if args.near_dedup_threshold is not None:
        dedup.append(f"MinHash near (Jaccard >= {args.near_dedup_threshold})")
    summary = (
        f"MAGPIE data (Xu et al. 2024): `{writer}` wrote {args.num_turns}-turn conversations from its pre-query "
        f"template alone, under {systems}. Instructions sampled at T={args.instruction_temperature}, "
        f"top-p={args.instruction_top_p} (at most {args.instruction_max_new_tokens} tokens); responses {response} "
        f"(at most {args.response_max_new_tokens} tokens), seed {args.seed}.\n\n"
        f"Filters, in order: empty instruction; instruction shorter than {args.min_instruction_chars} or longer than "
        f"{args.max_instruction_chars} characters; chat markup or a role header in the instruction; language "
        f"{args.language or '(off)'}; empty response; {' and '.join(dedup) or 'no'} duplicate instructions.\n\n"
        "Columns: the humpback pair schema with the first turn as instruction/output (source `magpie`), and "
        "`messages`, the whole conversation."
    )
    title = magpie_repo_id(args.hub_prefix) if args.hub_prefix else "humpback magpie"
    return dataset_card(
        title=title, summary=summary, counts=counts, links={"generating model": writer}, private=args.hub_private_repo
    )


def magpie_outputs(
    kept: Dataset,
    counts: dict[str, int],
    summary: dict[str, Any] | None,
    args: MagpieArguments,
    writer: str,
    thinking: dict[str, int] | None,
) -> StageOutputs:
    report: dict[str, Any] = {**counts, "generator": writer, "num_turns": args.num_turns, "lengths": subset_stats(kept)}
    if thinking is not None:
        report["thinking"] = thinking
    if summary is not None:
        report["iterations"] = [summary]
    return StageOutputs(
        report=report,
        title="MAGPIE",
        card=magpie_card(counts, args, writer),
        files={MAGPIE.pairs: kept},
        push=kept,
        hub_repo=magpie_repo_id(args.hub_prefix) if args.push_to_hub and args.hub_prefix else None,
        private=args.hub_private_repo,
    )
