"""Self-augmentation (Li et al. 2024, section 2.1): the backward model M_yx writes an instruction for every
segment of the unlabeled corpus, giving the candidate pool A of (instruction, segment) pairs.

    accelerate launch -m humpback_trl.scripts.augment --config recipes/quickstart/augment.yaml
    humpback augment --config recipes/quickstart/augment.yaml

The prompt is built by the same collator code that trained M_yx, with the prompt settings saved beside the adapter.
Work is split in resumable shards across accelerate processes; sampling defaults to the paper's T=0.7, top-p=0.9.
With `instructions_per_segment: N` the backward model samples N instructions per segment (candidate ids
`<segment id>#1` .. `#N`); curation keeps at most the best scored of them in A4 / A5, and likelihood-mode curation
computes the segment's own passes once for all N.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import set_seed

from humpback_trl.chat_template import render
from humpback_trl.collators import load_collator
from humpback_trl.configs import AugmentArguments
from humpback_trl.engines import generate, load_engine
from humpback_trl.errors import MissingColumnError
from humpback_trl.hub import candidates_repo_id, dataset_card, model_repo_id
from humpback_trl.modeling import InferenceModelArguments, adapter_folder, load_tokenizer
from humpback_trl.pairs import PAIR_FEATURES, drop_blank, load_table, make_pair
from humpback_trl.paths import public_name
from humpback_trl.reports import subset_stats
from humpback_trl.shards import run_sharded
from humpback_trl.stage import StageOutputs, finish_stage
from humpback_trl.stage_outputs import AUGMENT


def load_segments(args: AugmentArguments) -> Dataset:
    table = load_table(args.corpus, split=args.corpus_split)
    for column in (args.text_column, args.id_column):
        if column not in table.column_names:
            raise MissingColumnError(f"{args.corpus}: no column {column!r}; its columns are {table.column_names}")
    if args.max_segments is not None:
        table = table.select(range(min(args.max_segments, len(table))))
    n = args.instructions_per_segment

    def expand(ids: list[Any], texts: list[str]) -> dict[str, list[str]]:
        # One row per instruction to write: the shard key must be unique, so copies carry their number.
        keys = [str(i) if n == 1 else f"{i}#{k}" for i in ids for k in range(1, n + 1)]
        return {"source_id": keys, "text": [text for text in texts for _ in range(n)]}

    return table.map(
        expand,
        input_columns=[args.id_column, args.text_column],
        batched=True,
        remove_columns=table.column_names,
    )


def augment(args: AugmentArguments, model_args: InferenceModelArguments) -> Dataset:
    segments = load_segments(args)
    tokenizer = load_tokenizer(model_args)
    collator = load_collator(tokenizer, adapter_folder(model_args), "backward")
    sampling = args.sampling
    engine = load_engine(model_args, args.engine)

    def work(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # Seeding by the shard's first key makes a shard's instructions the same whichever process writes it and
        # whether or not the run was interrupted, so a resumed run ends with the data of an uninterrupted one.
        seed = args.seed + zlib.crc32(rows[0]["source_id"].encode())
        set_seed(seed)
        prompts = [
            render(tokenizer, collator.prompt_messages({}, row["text"]), True, **collator.template_kwargs)
            for row in rows
        ]
        instructions = generate(engine, tokenizer, prompts, sampling, args.token_budget, None, seed)
        return [
            make_pair(instruction, row["text"], "augmented", row["source_id"])
            for row, instruction in zip(rows, instructions, strict=True)
        ]

    generated = run_sharded(
        segments,
        work,
        Path(args.output_dir),
        shard_size=args.shard_size,
        key="source_id",
        desc="Writing instructions",
        features=PAIR_FEATURES,
        job={
            "writer": vars(model_args),
            "engine": engine.name,
            "sampling": vars(sampling),
            "seed": args.seed,
            "instructions_per_segment": args.instructions_per_segment,
            "prompt": collator.backward_prompt,
            "system": collator.system_prompt,
        },
    )
    candidates, report = drop_blank(generated, "generated instructions")
    counts = {"segments": len(segments) // args.instructions_per_segment, "empty_instruction": report.rejected}
    finish_stage(candidate_outputs(candidates, args, model_args, counts), args.output_dir)
    return candidates


def candidate_outputs(
    candidates: Dataset, args: AugmentArguments, model_args: InferenceModelArguments, counts: dict[str, int]
) -> StageOutputs:
    writer = public_name(model_args.adapter or model_args.model_name_or_path)
    funnel = {**counts, "candidates": len(candidates), "writer": writer, "lengths": subset_stats(candidates)}
    card = dataset_card(
        title=candidates_repo_id(args.hub_prefix) if args.hub_prefix else "humpback candidates",
        summary=f"Candidate pairs: instructions written by the backward model `{writer}` for segments of "
        f"`{public_name(args.corpus)}` (T={args.temperature}, top-p={args.top_p}). Not yet curated.",
        counts={key: value for key, value in funnel.items() if isinstance(value, int)},
        links={
            "backward model": model_repo_id(args.hub_prefix, "myx") if args.hub_prefix else writer,
            "corpus": public_name(args.corpus),
        },
        private=args.hub_private_repo,
    )
    return StageOutputs(
        report=funnel,
        title="Self-augmentation",
        card=card,
        files={AUGMENT.candidates: candidates},
        push=candidates,
        hub_repo=candidates_repo_id(args.hub_prefix) if args.push_to_hub and args.hub_prefix else None,
        private=args.hub_private_repo,
    )
