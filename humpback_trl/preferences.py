"""Preference data from the rubric scores, in TRL's conversational formats, for `DPOTrainer` and `KTOTrainer`.

Two kinds, one stage (`humpback preferences`):

- `dpo`: self-rewarding pairs (Yuan et al. 2024, arXiv 2401.10020). For every instruction of a curated pool, the
  forward model M_k samples `num_samples` answers (T=0.7, top-p=0.9: the paper's sampling), the scorer (M_k unless
  `scorer_adapter` names another adapter) rates each on the backtranslation rubric, and the best answer becomes
  `chosen`, the worst `rejected`. A pair whose score gap is below `margin` (or zero: a tie says nothing) is dropped and
  counted. Sampling and scoring run in resumable shards (`shards.run_sharded`), so a killed run resumes with no loss
  or duplication.
- `kto`: the scored pool itself, no model call: a pair scoring at least the A5 threshold is desirable, one scoring
  at most `low_threshold` undesirable; the pairs between them, and unparsed ones, are counted and left out.

Prompts are built by the collator M_k was trained with (its saved prompt settings: system prompt, source tags,
template arguments), so the preference prompts are the ones M_k answers at inference. KTO completions are the pool's
outputs, so their prompts carry the source tag of their pair, exactly as at SFT training; DPO completions are M_k's
own answers to the prompt it was asked, which carries the `tags` given (both source tags by default, the paper's
best inference setting, Table 8, and what `humpback chat` uses).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, List, Value, concatenate_datasets
from transformers import PreTrainedTokenizerBase, set_seed

from humpback_trl.chat import TAG_CHOICES
from humpback_trl.chat_template import Message, render, template_kwargs
from humpback_trl.collators import SwappedFieldCollator, load_collator
from humpback_trl.configs import PreferenceArguments
from humpback_trl.engines import Engine, choose_engine, generate, load_engine
from humpback_trl.errors import UserError
from humpback_trl.generation import SamplingConfig
from humpback_trl.hub import dataset_card
from humpback_trl.modeling import InferenceModelArguments, adapter_folder, base_model_name, load_tokenizer
from humpback_trl.pairs import load_pairs
from humpback_trl.paths import public_name
from humpback_trl.scoring import GENERATE_SAMPLING, score_pairs
from humpback_trl.shards import run_sharded
from humpback_trl.stage import StageOutputs, finish_stage
from humpback_trl.stage_outputs import PREFERENCES

logger = logging.getLogger(__name__)


MESSAGES = List({"role": Value("string"), "content": Value("string")})
SAMPLE_FEATURES = Features(
    {
        "source_id": Value("string"),
        "instruction": Value("string"),
        "source": Value("string"),
        "prompt": MESSAGES,
        "answers": List(Value("string")),
        "scores": List(Value("float64")),
        "masses": List(Value("float64")),
    }
)


def preferences_repo_id(prefix: str, kind: str) -> str:
    return f"{prefix}-preferences-{kind}"


def assistant(text: str) -> list[Message]:
    return [{"role": "assistant", "content": text}]


def table(rows: Sequence[Mapping[str, Any]], features: Features) -> Dataset:
    """`rows` as a Dataset with `features`, also when there are none (`Dataset.from_list([])` loses the columns)."""
    return Dataset.from_dict({name: [row[name] for row in rows] for name in features}, features=features)


def with_template_kwargs(data: Dataset, collator: SwappedFieldCollator) -> Dataset:
    """Every row carries the template arguments the prompts were rendered with (Llama 3's pinned date...), which TRL
    passes to `apply_chat_template`: the trainer then renders exactly the text M_k was prompted with."""
    if not len(data):
        return data
    return data.add_column("chat_template_kwargs", [template_kwargs(collator.template_kwargs)] * len(data))


def mean(values: Sequence[float]) -> float:
    return round(sum(values) / len(values), 4)


def pick_pair(scores: Sequence[float | None], margin: float) -> tuple[int, int, str]:
    """(chosen index, rejected index, status) for one instruction's scored answers. Status: `kept`; `too_few` (fewer
    than two scored answers); `under_margin` (best - worst < margin, or a tie, which says nothing about preference).
    The first of equal scores wins, so the choice is deterministic."""
    scored = [i for i, score in enumerate(scores) if score is not None]
    if len(scored) < 2:
        return -1, -1, "too_few"
    chosen = max(scored, key=lambda i: scores[i])
    rejected = min(scored, key=lambda i: scores[i])
    gap = scores[chosen] - scores[rejected]
    return chosen, rejected, ("kept" if gap > 0 and gap >= margin else "under_margin")


def dpo_pairs(samples: Dataset, margin: float) -> tuple[Dataset, dict[str, int]]:
    """TRL's conversational preference rows (prompt / chosen / rejected message lists) plus the two scores."""
    rows: list[dict[str, Any]] = []
    status_counts = {"kept": 0, "too_few": 0, "under_margin": 0}
    for sample in samples:
        chosen, rejected, status = pick_pair(sample["scores"], margin)
        status_counts[status] += 1
        if status == "kept":
            rows.append(
                {
                    "prompt": sample["prompt"],
                    "chosen": assistant(sample["answers"][chosen]),
                    "rejected": assistant(sample["answers"][rejected]),
                    "chosen_score": sample["scores"][chosen],
                    "rejected_score": sample["scores"][rejected],
                    "source_id": sample["source_id"],
                }
            )
    answers = [answer for sample in samples for answer in sample["answers"]]
    scores = [score for sample in samples for score in sample["scores"]]
    blank = sum(1 for answer in answers if not answer.strip())
    low_mass = sum(1 for sample in samples for s, m in zip(sample["scores"], sample["masses"], strict=True)
                   if s is None and m is not None)  # fmt: skip
    counts = {
        "instructions": len(samples),
        "answers_sampled": len(answers),
        "blank_answers": blank,
        "low_mass_answers": low_mass,
        "unscored_answers": sum(1 for score in scores if score is None) - blank - low_mass,
        "too_few_scored_answers": status_counts["too_few"],
        "dropped_under_margin": status_counts["under_margin"],
        "pairs_kept": status_counts["kept"],
    }
    features = Features(
        {
            "prompt": MESSAGES,
            "chosen": MESSAGES,
            "rejected": MESSAGES,
            "chosen_score": Value("float64"),
            "rejected_score": Value("float64"),
            "source_id": Value("string"),
        }
    )
    return table(rows, features), counts


def trusted(score: float | None, mass: float | None, min_mass: float) -> float | None:
    """The score, or None where logits mode put less than `min_mass` on the digits (the model was not rating)."""
    return None if mass is not None and mass < min_mass else score


def kto_label(score: float | None, a5_threshold: float, low_threshold: float) -> bool | None:
    """True (desirable) at or above A5, False (undesirable) at or below the low threshold, None in between."""
    if score is None:
        return None
    if score >= a5_threshold:
        return True
    return False if score <= low_threshold else None


def kto_rows(
    pool: Dataset, collator: SwappedFieldCollator, a5_threshold: float, low_threshold: float, min_mass: float = 0.0
) -> tuple[Dataset, dict[str, int]]:
    """TRL's conversational unpaired rows (prompt / completion / label) from a scored pool, with each pair's score.
    The prompt is the SFT prompt of the pair, its source tag included."""
    rows: list[dict[str, Any]] = []
    unscored = low_mass = between = 0
    for pair in pool:
        score = trusted(pair["score"], pair["score_mass"], min_mass)
        label = kto_label(score, a5_threshold, low_threshold)
        if label is None:
            unscored += pair["score"] is None
            low_mass += pair["score"] is not None and score is None
            between += score is not None
            continue
        rows.append(
            {
                "prompt": collator.prompt_messages(pair, pair["output"]),
                "completion": assistant(pair["output"]),
                "label": label,
                "score": pair["score"],
                "source_id": pair["source_id"],
            }
        )
    desirable = sum(1 for row in rows if row["label"])
    counts = {
        "scored_pool": len(pool),
        "desirable": desirable,
        "undesirable": len(rows) - desirable,
        "between_thresholds": between,
        "low_mass": low_mass,
        "unscored": unscored,
    }
    features = Features(
        {
            "prompt": MESSAGES,
            "completion": MESSAGES,
            "label": Value("bool"),
            "score": Value("float64"),
            "source_id": Value("string"),
        }
    )
    return table(rows, features), counts


def load_instructions(args: PreferenceArguments) -> Dataset:
    parts = [load_pairs(name, default_source="augmented", split=args.data_split)[0] for name in args.instructions]
    pool = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if args.instruction_min_score is not None:
        if all(score is None for score in pool["score"]):
            raise UserError(
                f"instruction_min_score is set but {args.instructions} hold no scores; pass a curation's scored.jsonl "
                "or unset instruction_min_score"
            )
        threshold = args.instruction_min_score
        pool = pool.filter(lambda score: score is not None and score >= threshold, input_columns="score")
    if args.max_instructions is not None:
        pool = pool.select(range(min(args.max_instructions, len(pool))))
    if len(pool) == 0:
        raise UserError(f"No instructions to answer in {args.instructions} (after instruction_min_score)")
    return pool


@dataclass
class Sampler:
    """What one shard of the DPO kind needs: the sampling model and the scorer on their engines, the prompt layout
    and the settings."""

    model: Engine
    scorer: Engine
    tokenizer: PreTrainedTokenizerBase
    collator: SwappedFieldCollator
    args: PreferenceArguments

    def prompt(self, instruction: str) -> list[Message]:
        return self.collator.prompt_messages({"instruction": instruction, "source": TAG_CHOICES[self.args.tags]}, "")

    def scores(
        self, instructions: Sequence[str], answers: Sequence[str]
    ) -> tuple[list[float | None], list[float | None]]:
        """Rubric scores and digit masses of the non-blank answers: a blank answer is not rated (None, None), an
        unparsed or low-mass one gets a None score. The rubric sees the bare instruction, as in self-curation."""
        rated = [i for i, answer in enumerate(answers) if answer.strip()]
        sampling = SamplingConfig(**{**vars(GENERATE_SAMPLING), "max_new_tokens": self.args.curation_max_new_tokens})
        results = score_pairs(
            self.scorer,
            self.tokenizer,
            [(instructions[i], answers[i]) for i in rated],
            mode=self.args.curation_mode,
            batch_size=self.args.curation_batch_size,
            sampling=sampling,
            token_budget=self.args.token_budget,
            show_progress=False,
            prompt_style=self.args.curation_prompt,
        )
        scores: list[float | None] = [None] * len(answers)
        masses: list[float | None] = [None] * len(answers)
        for index, result in zip(rated, results, strict=True):
            scores[index] = trusted(result.score, result.mass, self.args.min_score_mass)
            masses[index] = result.mass
        return scores, masses

    def __call__(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # Seeded by the shard's first key, so a shard's answers are the same whichever process writes it and whether
        # or not an earlier run was killed (as in augmentation).
        seed = self.args.seed + zlib.crc32(rows[0]["source_id"].encode())
        set_seed(seed)
        n = self.args.num_samples
        prompts = [self.prompt(row["instruction"]) for row in rows]
        texts = [render(self.tokenizer, p, True, **self.collator.template_kwargs) for p in prompts for _ in range(n)]
        sampling = self.args.sampling
        answers = generate(self.model, self.tokenizer, texts, sampling, self.args.token_budget, None, seed)
        scores, masses = self.scores([row["instruction"] for row in rows for _ in range(n)], answers)
        return [
            {
                "source_id": row["source_id"],
                "instruction": row["instruction"],
                "source": row["source"],
                "prompt": prompt,
                "answers": answers[i * n : (i + 1) * n],
                "scores": scores[i * n : (i + 1) * n],
                "masses": masses[i * n : (i + 1) * n],
            }
            for i, (row, prompt) in enumerate(zip(rows, prompts, strict=True))
        ]


def load_scorer(args: PreferenceArguments, model_args: InferenceModelArguments, model: Engine) -> Engine:
    """M_k's engine, or `scorer_adapter` on M_k's base, on the stage's engine."""
    if args.scorer_adapter is None:
        return model
    scorer_args = InferenceModelArguments(
        model_name_or_path=base_model_name(model_args),
        adapter=args.scorer_adapter,
        load_in_4bit=model_args.load_in_4bit,
        dtype=model_args.dtype,
        model_revision=model_args.model_revision,
    )
    return load_engine(scorer_args, choose_engine(args.engine, scorer_args, args.curation_mode == "likelihood"))


def sample_and_score(
    args: PreferenceArguments, model_args: InferenceModelArguments
) -> tuple[Dataset, SwappedFieldCollator]:
    """Every instruction's sampled answers and their scores (the `samples` of the DPO kind), shard by shard, and
    M_k's prompt layout."""
    instructions = load_instructions(args)
    # M_k also scores unless scorer_adapter names another model: then it samples on the engine asked for.
    scores_too = args.scorer_adapter is None and args.curation_mode == "likelihood"
    model = load_engine(model_args, choose_engine(args.engine, model_args, scores_too))
    tokenizer = load_tokenizer(model_args)
    collator = load_collator(tokenizer, adapter_folder(model_args), "forward")
    sampler = Sampler(model, load_scorer(args, model_args, model), tokenizer, collator, args)
    samples = run_sharded(
        instructions,
        sampler,
        Path(args.output_dir),
        shard_size=args.shard_size,
        key="source_id",
        desc=f"Sampling {args.num_samples} answers and scoring them",
        features=SAMPLE_FEATURES,
        job={
            "model": vars(model_args),
            "scorer": args.scorer_adapter,
            "num_samples": args.num_samples,
            "sampling": [args.temperature, args.top_p, args.max_new_tokens],
            "tags": args.tags,
            "scoring": [args.curation_mode, args.curation_prompt, args.curation_max_new_tokens, args.min_score_mass],
            "seed": args.seed,
            "system": collator.system_prompt,
            "engine": [model.name, sampler.scorer.name],
        },
    )
    return samples, collator


def score_summary(pairs: Dataset) -> dict[str, float]:
    if not len(pairs):
        return {}
    gaps = [c - r for c, r in zip(pairs["chosen_score"], pairs["rejected_score"], strict=True)]
    return {
        "mean_chosen_score": mean(pairs["chosen_score"]),
        "mean_rejected_score": mean(pairs["rejected_score"]),
        "mean_gap": mean(gaps),
    }


def stage_outputs(
    args: PreferenceArguments, data: Dataset, report: Mapping[str, Any], summary: str, links: Mapping[str, str]
) -> StageOutputs:
    repo = preferences_repo_id(args.hub_prefix, args.kind) if args.hub_prefix else None
    counts = {key: value for key, value in report.items() if isinstance(value, int)}
    title = repo or f"humpback {args.kind} preference data"
    card = dataset_card(title=title, summary=summary, counts=counts, links=links, private=args.hub_private_repo)
    return StageOutputs(
        report=report,
        title=f"Preference data ({args.kind.upper()})",
        card=card,
        files={PREFERENCES[args.kind].data: data},
        folders={PREFERENCES[args.kind].folder: data},
        push=data,
        hub_repo=repo if args.push_to_hub else None,
        private=args.hub_private_repo,
    )


def build_dpo(args: PreferenceArguments, model_args: InferenceModelArguments) -> tuple[Dataset, dict[str, Any]]:
    samples, collator = sample_and_score(args, model_args)
    pairs, counts = dpo_pairs(samples, args.margin)
    pairs = with_template_kwargs(pairs, collator)
    model = public_name(model_args.adapter or model_args.model_name_or_path)
    scorer = public_name(args.scorer_adapter or model)
    report = {
        **counts,
        "margin": args.margin,
        "scorer": scorer,
        "scoring_mode": args.curation_mode,
        **score_summary(pairs),
    }
    summary = (
        f"Self-rewarding preference pairs (Yuan et al. 2024): for each of {counts['instructions']} instructions from "
        f"{', '.join(f'`{public_name(name)}`' for name in args.instructions)}, `{model}` "
        f"sampled {args.num_samples} answers "
        f"(T={args.temperature}, top-p={args.top_p}); `{scorer}` scored each on the backtranslation rubric "
        f"({args.curation_mode} mode). chosen = best, rejected = worst; pairs with a score gap under {args.margin} "
        "(or tied) are dropped. TRL conversational format: `prompt` / `chosen` / `rejected` message lists, plus "
        "`chosen_score` / `rejected_score`."
    )
    links = {
        "sampling model (M_k)": model,
        "scorer": scorer,
        "instructions": ", ".join(map(public_name, args.instructions)),
    }
    finish_stage(stage_outputs(args, pairs, report, summary, links), args.output_dir)
    return pairs, report


def build_kto(args: PreferenceArguments, model_args: InferenceModelArguments) -> tuple[Dataset, dict[str, Any]]:
    pool, _ = load_pairs(args.scored_pool, default_source="augmented", split=args.data_split)
    collator = load_collator(load_tokenizer(model_args), adapter_folder(model_args), "forward")
    rows, counts = kto_rows(pool, collator, args.a5_threshold, args.low_threshold, args.min_score_mass)
    rows = with_template_kwargs(rows, collator)
    report = {**counts, "a5_threshold": args.a5_threshold, "low_threshold": args.low_threshold}
    summary = (
        f"KTO rows from the scored pool `{public_name(args.scored_pool)}`:"
        f" desirable = score >= {args.a5_threshold} (A5), "
        f"undesirable = score <= {args.low_threshold}; pairs in between or unscored are left out. TRL "
        "conversational unpaired format: `prompt` / `completion` message lists and a boolean `label`, plus `score`. "
        "Prompts carry each pair's source tag, as at SFT training."
    )
    links = {
        "scored pool": public_name(args.scored_pool),
        "prompt layout from": public_name(model_args.adapter or "defaults"),
    }
    finish_stage(stage_outputs(args, rows, report, summary, links), args.output_dir)
    return rows, report


def build_preferences(args: PreferenceArguments, model_args: InferenceModelArguments) -> tuple[Dataset, dict[str, Any]]:
    data, report = (build_dpo if args.kind == "dpo" else build_kto)(args, model_args)
    logger.info("%s preference data: %s -> %s", args.kind.upper(), report, args.output_dir)
    return data, report
