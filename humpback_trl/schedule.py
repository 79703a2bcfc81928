"""The paper's optimisation settings as one named option (Li et al. 2024, section 4.1 and Table 18), with the peak
learning rate taken from the fine-tuning method.

Shape (the paper's): the learning rate decays LINEARLY from its peak to a floor of 90% of it (an earlier reproduction
decayed it to ~0), weight decay 0.1, batch 32 (8 when there are fewer than 3,000 examples) and a step count that grows
with the data size. The decay reuses transformers' warmup-stable-decay scheduler with no warmup or stable phase and
min_lr_ratio 0.9.

Peak: 1e-5 -> 9e-6 is the paper's rate for FULL fine-tuning of LLaMA. A LoRA adapter trained at that rate barely moves
in a few hundred steps, so LoRA and QLoRA use 2e-4 -> 1.8e-4: the rate of the QLoRA paper (Dettmers et al. 2023,
appendix B.2: 2e-4 for 7B and 13B models with r=64, alpha=16, dropout 0.1), whose adapter settings the real recipes use.

Every value the schedule sets is logged at start-up; a key the user set (in the recipe or on the command line) is
kept and logged as kept.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import MISSING, fields
from typing import Any

from transformers import TrainingArguments

logger = logging.getLogger(__name__)

PAPER_LEARNING_RATE = 1e-5
LORA_LEARNING_RATE = 2e-4
FLOOR_RATIO = 0.9
PAPER_WEIGHT_DECAY = 0.1
SMALL_DATA_EXAMPLES = 3000
# (training examples, optimisation steps), Table 18.
STEPS_BY_DATA_SIZE: tuple[tuple[int, int], ...] = (
    (100, 30),
    (800, 300),
    (1600, 600),
    (3200, 500),
    (6400, 600),
    (12800, 600),
    (25600, 1200),
    (51200, 1600),
)
SCHEDULE_KEYS = (
    "max_steps",
    "gradient_accumulation_steps",
    "learning_rate",
    "weight_decay",
    "warmup_steps",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
)
PEAK_SOURCES = {
    False: "full fine-tuning: the paper's rate (Li et al. 2024, section 4.1)",
    True: "LoRA/QLoRA: the QLoRA paper's rate for 7B-13B models (Dettmers et al. 2023, appendix B.2)",
}


def paper_batch_size(num_examples: int) -> int:
    return 8 if num_examples < SMALL_DATA_EXAMPLES else 32


def paper_steps(num_examples: int) -> int:
    """Steps of the smallest table row that holds `num_examples` (the largest row beyond the table)."""
    for size, steps in STEPS_BY_DATA_SIZE:
        if num_examples <= size:
            return steps
    return STEPS_BY_DATA_SIZE[-1][1]


def peak_learning_rate(adapter: bool) -> float:
    return LORA_LEARNING_RATE if adapter else PAPER_LEARNING_RATE


def changed_from_default(args: TrainingArguments) -> set[str]:
    """Schedule keys whose value differs from the default of `args`' class: set by the user (in Python, or to a
    value other than the default in a recipe)."""
    defaults = {spec.name: spec.default for spec in fields(args) if spec.default is not MISSING}
    return {key for key in SCHEDULE_KEYS if key in defaults and getattr(args, key) != defaults[key]}


def paper_schedule(args: TrainingArguments, num_examples: int, world_size: int, adapter: bool) -> dict[str, Any]:
    """The values of the schedule for this data size, process count and fine-tuning method."""
    batch = paper_batch_size(num_examples)
    per_step = args.per_device_train_batch_size * world_size
    steps = args.max_steps if args.max_steps > 0 else paper_steps(num_examples)
    return {
        "max_steps": steps,
        "gradient_accumulation_steps": batch // per_step if batch % per_step == 0 else None,
        "learning_rate": peak_learning_rate(adapter),
        "weight_decay": PAPER_WEIGHT_DECAY,
        "warmup_steps": 0,
        "lr_scheduler_type": "warmup_stable_decay",
        # The last optimizer step (index steps - 1) trains at exactly the floor.
        "lr_scheduler_kwargs": {
            "num_stable_steps": 0,
            "num_decay_steps": max(steps - 1, 0),
            "min_lr_ratio": FLOOR_RATIO,
            "decay_type": "linear",
        },
    }


def apply_paper_schedule(
    args: TrainingArguments, num_examples: int, world_size: int, adapter: bool, user_keys: Collection[str] = ()
) -> dict[str, Any]:
    """Set the schedule on `args`, keeping every key in `user_keys` or changed from its default (an explicit
    `max_steps > 0`, e.g. for short smoke runs, included). Returns the values set."""
    kept = set(user_keys) | changed_from_default(args)
    if "lr_scheduler_type" in kept:
        # The decay kwargs belong to warmup_stable_decay; another scheduler keeps the user's own kwargs.
        kept.add("lr_scheduler_kwargs")
    values = paper_schedule(args, num_examples, world_size, adapter)
    if values["gradient_accumulation_steps"] is None and "gradient_accumulation_steps" not in kept:
        batch = paper_batch_size(num_examples)
        raise ValueError(
            f"The paper's batch of {batch} is not a multiple of per_device_train_batch_size "
            f"({args.per_device_train_batch_size}) x {world_size} processes; choose a divisor of {batch}."
        )
    applied = {key: value for key, value in values.items() if key not in kept}
    for key, value in applied.items():
        setattr(args, key, value)
    source = "your learning_rate" if "learning_rate" in kept else PEAK_SOURCES[adapter]
    decay = (
        f"-> floor {args.learning_rate * FLOOR_RATIO:.1e}"
        if "lr_scheduler_kwargs" in applied
        else f"with your {getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)} scheduler"
    )
    logger.info(
        "Paper schedule for %d examples (%s): peak lr %.1e %s; effective batch %d = %d x %d processes x %d",
        num_examples,
        source,
        args.learning_rate,
        decay,
        args.per_device_train_batch_size * world_size * args.gradient_accumulation_steps,
        args.per_device_train_batch_size,
        world_size,
        args.gradient_accumulation_steps,
    )
    for key in SCHEDULE_KEYS:
        state = "set by paper_schedule" if key in applied else "kept: set by you"
        value = getattr(args, key)
        logger.info("  %s = %s (%s)", key, getattr(value, "value", value), state)
    return applied
