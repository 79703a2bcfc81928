"""Everything that depends on how a tokenizer's chat template renders a conversation.

The collators, the generation engine and MAGPIE all read template facts from here, discovered by rendering
(never from a per-family table), so a new model family works as soon as its tokenizer has a template.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from jinja2.exceptions import TemplateError
from transformers import PreTrainedTokenizerBase

from humpback_trl.errors import UserError

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
# The switch hybrid-thinking templates (Qwen3 and its kin) read: False puts the empty thinking block in the
# generation prompt, so the model answers at once and the block is never part of a completion.
THINKING_SWITCH = "enable_thinking"
# An empty thinking block as a template writes it before an assistant's content: an opening tag, blank space, the
# closing tag ("<think>\n\n</think>\n\n").
_EMPTY_BLOCK = re.compile(r"\s*<([A-Za-z_][\w-]*)>\s*</\1>\s*")

Message = dict[str, str]

logger = logging.getLogger(__name__)


def template_kwargs(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**DEFAULT_TEMPLATE_KWARGS, **(overrides or {})}


def tokenizer_name(tokenizer: PreTrainedTokenizerBase) -> str:
    return tokenizer.name_or_path or type(tokenizer).__name__


def template_text(tokenizer: PreTrainedTokenizerBase, name: str | None = None) -> str:
    """The one template this project renders with: the tokenizer's template, its `name`d one (or "default") when it
    holds a dict of named templates (Command R+ ships default, tool_use and rag), or the plain fallback."""
    templates = tokenizer.chat_template
    if isinstance(templates, dict):
        key = name or "default"
        if key not in templates:
            raise UserError(
                f"The tokenizer of {tokenizer_name(tokenizer)!r} holds the chat templates "
                f"{sorted(templates)} and none is named {key!r}; choose one with chat_template_name."
            )
        return templates[key]
    if name is not None:
        raise UserError(
            f"chat_template_name={name!r}, but the tokenizer of {tokenizer_name(tokenizer)!r} holds a single template."
        )
    return templates or PLAIN_CHAT_TEMPLATE


def use_template(tokenizer: PreTrainedTokenizerBase, name: str | None = None) -> PreTrainedTokenizerBase:
    """Make `template_text` the tokenizer's own template, so everything that reads it (TRL, saved tokenizer files,
    transformers.pipeline, vLLM, TGI) uses the template the model is trained and prompted with."""
    tokenizer.chat_template = template_text(tokenizer, name)
    return tokenizer


def render(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    add_generation_prompt: bool = False,
    **kwargs: Any,
) -> str:
    """Render `messages` to text with the tokenizer's template (the default of a dict, or the plain fallback), in
    non-thinking mode where the template has a thinking switch (`kwargs` may still set it).

    A template that refuses a system message (Mixtral, Gemma) raises one clear error wherever it is rendered."""
    chat_template = template_text(tokenizer)
    kwargs = {**thinking_off(tokenizer), **kwargs}
    try:
        return tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            chat_template=chat_template,
            **template_kwargs(kwargs),
        )
    except TemplateError as error:
        dialogue = [message for message in messages if message["role"] != "system"]
        # Only blame the system role when the same conversation renders without it.
        if len(dialogue) < len(messages) and _renders(tokenizer, chat_template, dialogue, kwargs):
            raise UserError(
                f"The chat template of {tokenizer_name(tokenizer)!r} has no system role (it raised: {error}); "
                "leave the system prompt unset for this model."
            ) from error
        raise


def _renders(
    tokenizer: PreTrainedTokenizerBase, chat_template: str, messages: list[Message], kwargs: dict[str, Any]
) -> bool:
    try:
        tokenizer.apply_chat_template(messages, tokenize=False, chat_template=chat_template, **template_kwargs(kwargs))
    except TemplateError:
        return False
    return True


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


def _cache_key(tokenizer: PreTrainedTokenizerBase) -> tuple[str, str, int]:
    return (tokenizer.name_or_path, template_text(tokenizer), len(tokenizer))


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
    raise UserError(
        f"The chat template of {tokenizer.name_or_path!r} closes an assistant turn with {suffix!r}, which holds no "
        "special token; the model could never learn where an answer ends. Use a template with an end-of-turn token."
    )


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids that end generation: the template's end-of-turn token and EOS, in that order, without duplicates."""
    ids = [turn_end(tokenizer).token_ids[-1]]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


@dataclass(frozen=True)
class Thinking:
    """The thinking block a template writes in an assistant turn (Qwen3: "<think>\n\n</think>\n\n" before the
    content), its tags, and whether the template can leave it out of completions (its `enable_thinking` switch)."""

    open_tag: str
    close_tag: str
    switch: bool

    def strip(self, text: str) -> tuple[str, bool]:
        """`text` without the thinking blocks a model wrote, and whether there was one. A block left open (the
        model thought until its token limit) takes the rest of the text with it: no answer was written."""
        pattern = re.compile(rf"{re.escape(self.open_tag)}.*?(?:{re.escape(self.close_tag)}|\Z)", re.DOTALL)
        stripped = pattern.sub("", text)
        # A stray closing tag is thinking too: the block was opened in the prompt and closed by the model.
        if self.close_tag in stripped:
            stripped = stripped[stripped.rindex(self.close_tag) + len(self.close_tag) :]
        return (stripped.strip(), True) if stripped != text else (text, False)


def thinking(tokenizer: PreTrainedTokenizerBase) -> Thinking | None:
    """The template's thinking block, found by rendering (None for templates without one: ChatML, Llama, Gemma...)."""
    return _thinking(_cache_key(tokenizer), tokenizer)


@lru_cache(maxsize=32)
def _thinking(_key: tuple, tokenizer: PreTrainedTokenizerBase) -> Thinking | None:
    chat_template = template_text(tokenizer)
    user = [{"role": "user", "content": "Hi"}]

    def as_written(messages: list[Message], add_generation_prompt: bool) -> str:
        # Rendered as a user of the template would, without the project's switch: that is where the block shows.
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=chat_template,
            **template_kwargs(),
        )  # fmt: skip

    try:
        prompt = as_written(user, True)
        full = as_written([*user, {"role": "assistant", "content": SENTINEL}], False)
    except TemplateError:
        return None
    if not full.startswith(prompt) or SENTINEL not in full:
        return None
    block = _EMPTY_BLOCK.fullmatch(full[len(prompt) : full.index(SENTINEL)])
    if block is None:
        return None
    switch = re.search(rf"\b{THINKING_SWITCH}\b", chat_template) is not None
    return Thinking(open_tag=f"<{block.group(1)}>", close_tag=f"</{block.group(1)}>", switch=switch)


def thinking_off(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """The template kwargs of non-thinking mode: `enable_thinking=False` where the template reads the switch."""
    found = thinking(tokenizer)
    return {THINKING_SWITCH: False} if found and found.switch else {}


def strip_thinking(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> tuple[list[str], int]:
    """Generated `texts` without the thinking text a model of a thinking template still wrote, and how many held
    some. Texts of other templates are returned as they are."""
    found = thinking(tokenizer)
    if found is None:
        return texts, 0
    results = [found.strip(text) for text in texts]
    return [text for text, _ in results], sum(stripped for _, stripped in results)


@dataclass
class ThinkingCounts:
    """Texts a model of a thinking template generated, and how many of them held thinking text."""

    generated: int = 0
    stripped: int = 0


# What `strip_generated` saw since `take_thinking_counts` last read it: generation engines return text only, so the
# stage that asked for it reads the counts when it writes its report (stage.finish_stage).
_COUNTS = ThinkingCounts()


def strip_generated(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[str]:
    """What every generation engine (transformers, vLLM) returns: `texts` without thinking text, a warning saying
    how many held some, and both counts kept for the stage's report."""
    if thinking(tokenizer) is None:
        return texts
    texts, stripped = strip_thinking(tokenizer, texts)
    _COUNTS.generated += len(texts)
    _COUNTS.stripped += stripped
    if stripped:
        logger.warning(
            "%d of %d generated texts held thinking text despite non-thinking mode; it was stripped from them",
            stripped,
            len(texts),
        )
    return texts


def take_thinking_counts() -> dict[str, int] | None:
    """The counts since the last call (None when no thinking template generated anything), then zero."""
    counts = asdict(_COUNTS)
    _COUNTS.generated = _COUNTS.stripped = 0
    return counts if counts["generated"] else None
