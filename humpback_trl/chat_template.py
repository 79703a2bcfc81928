"""Everything that depends on how a tokenizer's chat template renders a conversation.

The collators, the generation engine and MAGPIE all read template facts from here, discovered by rendering
(never from a per-family table), so a new model family works as soon as its tokenizer has a template.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from transformers import PreTrainedTokenizerBase

# Used only when a tokenizer ships no chat template (base models): an Alpaca-like layout closed by EOS.
PLAIN_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
)

# Llama 3.x templates print today's date; pinning it keeps prompts identical between training, inference and reruns.
DEFAULT_TEMPLATE_KWARGS: dict[str, Any] = {"date_string": "26 Jul 2024"}

SENTINEL = "HUMPBACKSENTINEL"

Message = dict[str, str]


def template_kwargs(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**DEFAULT_TEMPLATE_KWARGS, **(overrides or {})}


def render(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    add_generation_prompt: bool = False,
    **kwargs: Any,
) -> str:
    """Render `messages` to text with the tokenizer's template (or the plain fallback)."""
    chat_template = None if tokenizer.chat_template else PLAIN_CHAT_TEMPLATE
    return tokenizer.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        chat_template=chat_template,
        **template_kwargs(kwargs),
    )


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of rendered text. The template already wrote BOS, so the tokenizer must not add it again."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, token in tokenizer.added_tokens_decoder.items() if token.special)
    return ids


@dataclass(frozen=True)
class TurnEnd:
    """How the template closes an assistant turn.

    `close` is the text from the end of the content up to and including the first special token (the end-of-turn
    token the model must learn to emit); `trailer` is whatever the template adds after it (a newline in ChatML), which
    is never generated because generation stops at `close`.
    """

    close: str
    trailer: str
    token_ids: tuple[int, ...]

    @property
    def suffix(self) -> str:
        return self.close + self.trailer


def _cache_key(tokenizer: PreTrainedTokenizerBase) -> tuple[str, str | None, int]:
    return (tokenizer.name_or_path, tokenizer.chat_template, len(tokenizer))


def turn_end(tokenizer: PreTrainedTokenizerBase) -> TurnEnd:
    return _turn_end(_cache_key(tokenizer), tokenizer)


@lru_cache(maxsize=32)
def _turn_end(_key: tuple, tokenizer: PreTrainedTokenizerBase) -> TurnEnd:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": SENTINEL}]
    text = render(tokenizer, messages)
    suffix = text[text.rindex(SENTINEL) + len(SENTINEL) :]
    specials = special_token_ids(tokenizer)
    ids = encode(tokenizer, suffix)
    for position, token_id in enumerate(ids):
        if token_id in specials:
            close = tokenizer.decode(ids[: position + 1], skip_special_tokens=False)
            if not suffix.startswith(close):
                break
            return TurnEnd(close=close, trailer=suffix[len(close) :], token_ids=tuple(ids[: position + 1]))
    raise ValueError(
        f"The chat template of {tokenizer.name_or_path!r} closes an assistant turn with {suffix!r}, which holds no "
        "special token; the model could never learn where an answer ends. Use a template with an end-of-turn token."
    )


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids that end generation: the template's end-of-turn token and EOS, in that order, without duplicates."""
    ids = [turn_end(tokenizer).token_ids[-1]]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
