"""The paper's optimisation settings as one named option (Li et al. 2024, section 4.1 and Table 18).

Learning rate 1e-5 decaying LINEARLY to a floor of 9e-6 (an earlier reproduction decayed it to ~0), weight decay
0.1, batch 32 (8 when there are fewer than 3,000 examples) and a step count that grows with the data size.
The decay reuses transformers' warmup-stable-decay scheduler with no warmup or stable phase and min_lr_ratio 0.9.
"""

from __future__ import annotations

import logging

from transformers import TrainingArguments

logger = logging.getLogger(__name__)

PAPER_LEARNING_RATE = 1e-5
PAPER_MIN_LEARNING_RATE = 9e-6
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


def paper_batch_size(num_examples: int) -> int:
    return 8 if num_examples < SMALL_DATA_EXAMPLES else 32


def paper_steps(num_examples: int) -> int:
    """Steps of the smallest table row that holds `num_examples` (the largest row beyond the table)."""
    for size, steps in STEPS_BY_DATA_SIZE:
        if num_examples <= size:
            return steps
    return STEPS_BY_DATA_SIZE[-1][1]


def apply_paper_schedule(args: TrainingArguments, num_examples: int, world_size: int) -> None:
    """Set the paper's schedule on `args`. An explicit `max_steps > 0` is kept (short smoke runs)."""
    batch = paper_batch_size(num_examples)
    per_step = args.per_device_train_batch_size * world_size
    if batch % per_step:
        raise ValueError(
            f"The paper's batch of {batch} is not a multiple of per_device_train_batch_size "
            f"({args.per_device_train_batch_size}) x {world_size} processes; choose a divisor of {batch}."
        )
    steps = args.max_steps if args.max_steps > 0 else paper_steps(num_examples)
    args.max_steps = steps
    args.gradient_accumulation_steps = batch // per_step
    args.learning_rate = PAPER_LEARNING_RATE
    args.weight_decay = PAPER_WEIGHT_DECAY
    args.warmup_steps = 0
    args.lr_scheduler_type = "warmup_stable_decay"
    # The last optimizer step (index steps - 1) trains at exactly the floor.
    args.lr_scheduler_kwargs = {
        "num_stable_steps": 0,
        "num_decay_steps": max(steps - 1, 0),
        "min_lr_ratio": PAPER_MIN_LEARNING_RATE / PAPER_LEARNING_RATE,
        "decay_type": "linear",
    }
    logger.info(
        "Paper schedule: %d examples -> batch %d (%d x %d processes x %d accumulation), %d steps, lr %.0e -> %.0e",
        num_examples,
        batch,
        args.per_device_train_batch_size,
        world_size,
        args.gradient_accumulation_steps,
        steps,
        PAPER_LEARNING_RATE,
        PAPER_MIN_LEARNING_RATE,
    )
