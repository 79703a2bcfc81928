"""Swapped-field collation: one collator trains the forward model p(output | instruction) and the backward model
p(instruction | output) (Li et al. 2024, section 2.1) from the same raw pair rows.

Each row is rendered with the tokenizer's chat template as a user turn (the prompt) and an assistant turn (the
completion). Labels cover exactly the tokens the model has to generate: the completion plus the end-of-turn token
that closes it. The prompt, the system block, the template's trailer after the end-of-turn token and the padding
are -100.

Truncation rule: when a row exceeds `max_length`, the OUTPUT text is shortened from the right (token by token)
until the row fits, so the instruction is never cut. In the forward direction the output is the completion, so a
truncated completion carries no end-of-turn token: the model is not taught to stop mid-answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase

from humpback_trl.chat_template import (
    THINKING_SWITCH,
    Message,
    encode,
    render,
    thinking,
    thinking_off,
    tokenizer_name,
    turn_end,
)
from humpback_trl.configs import DEFAULT_BACKWARD_PROMPT
from humpback_trl.errors import MissingColumnError, UserError
from humpback_trl.padding import pad, pad_batch
from humpback_trl.tagging import Tagging

Direction = Literal["forward", "backward"]

IGNORE_INDEX = -100
# Re-rendering a decoded prefix can merge tokens differently; a few rounds always converge in practice.
MAX_TRUNCATION_ROUNDS = 8


@dataclass
class EncodedPair:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


@dataclass
class SwappedFieldCollator:
    """Collate raw `{"instruction", "output", "source"?}` rows into `input_ids`, `attention_mask` and `labels`.

    `direction="backward"` (the default) puts the output in the prompt (inside `backward_prompt`) and trains on
    the instruction; `direction="forward"` trains on the output, with the paper's source tag appended to the
    instruction when `tagging` is enabled (never in the backward direction: the backward model must write
    untagged instructions).
    """

    tokenizer: PreTrainedTokenizerBase
    direction: Direction = "backward"
    max_length: int | None = 1024
    system_prompt: str | None = None
    backward_prompt: str = DEFAULT_BACKWARD_PROMPT
    tagging: Tagging = field(default_factory=Tagging)
    pad_to_multiple_of: int | None = None
    template_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.direction not in ("forward", "backward"):
            raise UserError(f"direction must be 'forward' or 'backward', got {self.direction!r}")
        if "{output}" not in self.backward_prompt:
            raise UserError("backward_prompt must contain the placeholder {output}")
        self._turn_end = turn_end(self.tokenizer)
        # Non-thinking mode unless the recipe says otherwise; kept in the template kwargs, so the adapter's saved
        # prompt settings (and every stage that renders with them) prompt as training did.
        self.template_kwargs = {**thinking_off(self.tokenizer), **self.template_kwargs}

    def prompt_messages(self, row: Mapping[str, Any], output: str) -> list[Message]:
        """The conversation before the completion; `humpback augment` reuses it for the backward prompt."""
        if self.direction == "backward":
            user = self.backward_prompt.format(output=output)
        else:
            user = self.tagging.apply(row["instruction"], row.get("source", "seed"))
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, {"role": "user", "content": user}]

    def _render_prompt(self, messages: list[Message]) -> str:
        return render(self.tokenizer, messages, add_generation_prompt=True, **self.template_kwargs)

    def _assistant_chunk(self, prompt_text: str, messages: list[Message], completion: str) -> str | None:
        """What the template writes for the assistant turn after `prompt_text` (the render of `messages` with the
        generation prompt), or None if that render is not a prefix of the conversation render."""
        full_text = render(
            self.tokenizer, [*messages, {"role": "assistant", "content": completion}], **self.template_kwargs
        )
        if not full_text.startswith(prompt_text) or not full_text.endswith(self._turn_end.suffix):
            return None
        return full_text[len(prompt_text) : len(full_text) - len(self._turn_end.suffix)]

    def _tokenize(self, row: Mapping[str, Any], output: str, close_turn: bool) -> tuple[list[int], list[int]]:
        messages = self.prompt_messages(row, output)
        completion = output if self.direction == "forward" else row["instruction"]
        prompt_text = self._render_prompt(messages)
        content = self._assistant_chunk(prompt_text, messages, completion)
        if content is None and messages[0]["role"] == "system":
            # Some templates (Mistral v0.3) attach the system prompt only to the LAST message, so it vanishes once
            # an assistant turn follows. Inference sees it, so train on the prompt as inference renders it and take
            # the assistant turn's rendering from the conversation without the system block.
            content = self._assistant_chunk(self._render_prompt(messages[1:]), messages[1:], completion)
        if content is None:
            raise UserError(
                f"The chat template of {self.tokenizer.name_or_path!r} does not render the generation prompt as a "
                f"prefix of the conversation, or does not end the assistant turn with {self._turn_end.suffix!r}; "
                f"cannot locate the completion (row {row.get('source_id', '?')})."
            )
        self._refuse_thinking_block(content)
        completion_text = content + self._turn_end.close if close_turn else content
        prompt_ids = encode(self.tokenizer, prompt_text)
        joint_ids = encode(self.tokenizer, prompt_text + completion_text)
        # Tokenizing the joint text gives the tokens generation produces after the prompt; only when a merge
        # crosses the boundary (rare) are the two parts tokenized separately.
        if joint_ids[: len(prompt_ids)] == prompt_ids:
            return prompt_ids, joint_ids[len(prompt_ids) :]
        return prompt_ids, encode(self.tokenizer, completion_text)

    def _refuse_thinking_block(self, content: str) -> None:
        """A thinking block in the completion would teach the model to open every answer or instruction with it."""
        found = thinking(self.tokenizer)
        if found is None or not content.lstrip().startswith(found.open_tag):
            return
        how = (
            f"leave {THINKING_SWITCH} unset (non-thinking mode puts the block in the prompt)"
            if found.switch
            else "choose a template without thinking blocks (chat_template_name)"
        )
        raise UserError(
            f"The chat template of {tokenizer_name(self.tokenizer)!r} writes a thinking block "
            f"({found.open_tag}...{found.close_tag}) into the assistant turn with template_kwargs "
            f"{self.template_kwargs}, so it would be trained as part of every completion; {how}."
        )

    def encode_row(self, row: Mapping[str, Any]) -> EncodedPair:
        missing = [column for column in ("instruction", "output") if column not in row]
        if missing:
            raise MissingColumnError(
                f"Row {row.get('source_id', '?')} has no {' or '.join(missing)} column (its columns: {list(row)}); "
                "the collator reads raw pair rows: rename the columns to instruction and output"
            )
        output = row["output"]
        truncated = False
        for _ in range(MAX_TRUNCATION_ROUNDS):
            close_turn = not (truncated and self.direction == "forward")
            prompt_ids, completion_ids = self._tokenize(row, output, close_turn)
            excess = len(prompt_ids) + len(completion_ids) - (self.max_length or 0)
            if self.max_length is None or excess <= 0:
                labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
                return EncodedPair(prompt_ids + completion_ids, labels, truncated)
            output_ids = encode(self.tokenizer, output)
            if excess >= len(output_ids):
                raise UserError(
                    f"Row {row.get('source_id', '?')}: even with the output removed the row needs "
                    f"{len(prompt_ids) + len(completion_ids) - len(output_ids)} tokens, more than "
                    f"max_length={self.max_length}; the instruction is never cut, so raise max_length or drop the row."
                )
            output = self.tokenizer.decode(output_ids[: len(output_ids) - excess])
            truncated = True
        raise RuntimeError(f"Row {row.get('source_id', '?')}: truncation did not converge")

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        encoded = [self.encode_row(row) for row in rows]
        width = max(len(e.input_ids) for e in encoded)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        input_ids, attention_mask = pad_batch([e.input_ids for e in encoded], pad_id, "right", width)
        labels = pad([e.labels for e in encoded], IGNORE_INDEX, "right", width)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


PROMPT_SETTINGS_FILE = "humpback_prompts.json"


def save_prompt_settings(collator: SwappedFieldCollator, folder: str | Path) -> None:
    """Store the prompt layout beside a trained adapter, so inference rebuilds exactly the training prompts."""
    settings = {
        "direction": collator.direction,
        "system_prompt": collator.system_prompt,
        "backward_prompt": collator.backward_prompt,
        "tagging": collator.tagging.enabled,
        "tags": collator.tagging.tags,
        "template_kwargs": collator.template_kwargs,
    }
    (Path(folder) / PROMPT_SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


def load_collator(
    tokenizer: PreTrainedTokenizerBase, folder: str | Path | None, direction: Direction
) -> SwappedFieldCollator:
    """The collator a model in `folder` was trained with (defaults when the folder holds no settings file)."""
    path = Path(folder) / PROMPT_SETTINGS_FILE if folder else None
    if path is None or not path.is_file():
        return SwappedFieldCollator(tokenizer, direction=direction)
    settings = json.loads(path.read_text(encoding="utf-8"))
    if settings["direction"] != direction:
        raise UserError(f"{folder} holds a {settings['direction']} model, but a {direction} model is needed here")
    return SwappedFieldCollator(
        tokenizer,
        direction=direction,
        system_prompt=settings["system_prompt"],
        backward_prompt=settings["backward_prompt"],
        tagging=Tagging(enabled=settings["tagging"], tags=settings["tags"]),
        template_kwargs=settings["template_kwargs"],
    )
