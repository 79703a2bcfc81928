"""SelfCurationCallback: a forward model that finishes training scores a pool of candidate pairs, for the Python API.

Add it to any TRL trainer (`humpback_trl.training.train(..., callbacks=[...])` or your own) to score candidates
with the model still in memory when training ends, as self-curation does (Li et al. 2024, section 2.3: M_k trains
on seed + A5 scored by M_{k-1}). The loop itself does not use it: `humpback run` curates in its own stage
(`humpback curate`, resumable shards across processes). The callback needs only the trainer's model, processing
class and accelerate state, so any TRL trainer can carry it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accelerate import PartialState
from datasets import Dataset
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from humpback_trl.curation import CurationSettings, curate
from humpback_trl.errors import UserError


class SelfCurationCallback(TrainerCallback):
    """Score `candidates` with the just-trained model at the end of training and write (and optionally push) the
    scored pool with its A4/A5 subsets under `output_dir` (and `hub_repo`, private when `private`). The model is used
    in eval mode and its training mode is restored afterwards; `self.summary` holds the funnel counts."""

    def __init__(
        self,
        candidates: Dataset,
        output_dir: str | Path,
        settings: CurationSettings | None = None,
        iteration: int = 1,
        scorer: str = "model",
        hub_repo: str | None = None,
        private: bool | None = None,
    ) -> None:
        self.candidates = candidates
        self.output_dir = Path(output_dir)
        self.settings = settings or CurationSettings()
        self.iteration = iteration
        self.scorer = scorer
        self.hub_repo = hub_repo
        self.private = private
        self.summary: dict[str, Any] | None = None

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model, tokenizer = kwargs["model"], kwargs["processing_class"]
        distributed = str(PartialState().distributed_type)
        if "FSDP" in distributed or "DEEPSPEED" in distributed:
            # Sharded weights need every process in every forward pass, but shards give processes uneven work.
            raise UserError(
                f"Self-curation cannot run inside a {distributed} training job (its weights are sharded across "
                "processes). Train without this callback, then score with `humpback curate --adapter "
                f"{args.output_dir}` launched on one GPU or with accelerate_configs/multi_gpu.yaml."
            )
        _, self.summary = curate(
            model,
            tokenizer,
            self.candidates,
            self.settings,
            iteration=self.iteration,
            scorer=self.scorer,
            output_dir=self.output_dir,
            hub_repo=self.hub_repo,
            private=self.private,
        )
