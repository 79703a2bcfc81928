"""Padding token-id rows into a batch: one helper for the training collator (right), logits scoring (right) and
generation (left).

Padding by hand, rather than through `tokenizer.pad`, leaves the tokenizer's padding_side and pad token untouched, so
no caller ever sees them changed (the SFT collator pads right, batched generation needs left).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

Side = Literal["left", "right"]


def pad(sequences: Sequence[Sequence[int]], value: int, side: Side = "right", width: int | None = None) -> torch.Tensor:
    """[rows, width] long tensor of `sequences` padded with `value` on `side`; `width` defaults to the longest."""
    width = max(len(ids) for ids in sequences) if width is None else width
    out = torch.full((len(sequences), width), value, dtype=torch.long)
    for row, ids in enumerate(sequences):
        if len(ids):
            span = slice(width - len(ids), width) if side == "left" else slice(0, len(ids))
            out[row, span] = torch.tensor(list(ids), dtype=torch.long)
    return out


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, side: Side = "right", width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) with the mask 1 on the real tokens."""
    input_ids = pad(sequences, pad_id, side, width)
    mask = pad([[1] * len(ids) for ids in sequences], 0, side, input_ids.shape[1])
    return input_ids, mask
