"""MAGPIE: self-synthesised instruction data from an aligned chat model (Xu et al. 2024, arXiv 2406.08464).

An aligned model given only the text its chat template puts before a user message (the "pre-query template")
samples a plausible user instruction; rendering that instruction back through the template yields a response.

The official configs hand-write the pre-query template per model family. Here it is derived by rendering a
conversation whose last user message is a sentinel and cutting at the sentinel, so the template's own default
system block (Qwen2.5, SmolLM2), its dated system block (Llama 3.x, pinned by `chat_template.render`) and its BOS
come out exactly as the model saw them in alignment training, for any tokenizer that ships a template.
"""

from __future__ import annotations

from typing import Any

from jinja2.exceptions import TemplateError
from transformers import PreTrainedTokenizerBase

from humpback_trl.chat_template import SENTINEL, Message, encode, render, special_token_ids

_TURN_ROLES = ("user", "assistant")


def _tokenizer_name(tokenizer: PreTrainedTokenizerBase) -> str:
    return tokenizer.name_or_path or type(tokenizer).__name__


def _check_history(history: list[Message]) -> None:
    # The prefix is for the *next user* turn, so earlier turns must be complete user/assistant exchanges; a system
    # message belongs in `system_prompt`, where templates that cannot hold one are detected.
    for index, message in enumerate(history):
        expected = _TURN_ROLES[index % 2]
        if not isinstance(message, dict) or "content" not in message or message.get("role") != expected:
            raise ValueError(
                f"history[{index}] must be a {{'role': {expected!r}, 'content': ...}} message: history alternates "
                "user/assistant turns starting with a user turn (pass a system prompt as system_prompt), "
                f"got {message!r}"
            )
    if len(history) % 2:
        raise ValueError(
            "history must end with an assistant turn: the pre-query template is the prefix of the next user turn, "
            f"but history holds {len(history)} messages and ends with a user turn"
        )


def _render_with_sentinel_query(
    tokenizer: PreTrainedTokenizerBase,
    system_prompt: str | None,
    history: list[Message] | None,
    template_kwargs: dict[str, Any],
) -> str:
    """The whole conversation, ending with a user turn whose content is the sentinel."""
    turns = list(history or [])
    _check_history(turns)
    system = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    turns.append({"role": "user", "content": SENTINEL})
    try:
        text = render(tokenizer, system + turns, **template_kwargs)
    except TemplateError as error:
        # Only blame the system role when the same conversation renders without it (Gemma-2 raises for it).
        if system and _renders(tokenizer, turns, template_kwargs):
            raise ValueError(
                f"The chat template of {_tokenizer_name(tokenizer)!r} has no system role (it raised {error}); "
                "generate without a system prompt for this model."
            ) from error
        raise
    if SENTINEL not in text:
        raise ValueError(
            f"The chat template of {_tokenizer_name(tokenizer)!r} does not copy the user message into its output, "
            "so the text before a user message cannot be found."
        )
    return text


def _renders(tokenizer: PreTrainedTokenizerBase, messages: list[Message], template_kwargs: dict[str, Any]) -> bool:
    try:
        render(tokenizer, messages, **template_kwargs)
    except TemplateError:
        return False
    return True


def pre_query_template(
    tokenizer: PreTrainedTokenizerBase,
    system_prompt: str | None = None,
    history: list[Message] | None = None,
    **template_kwargs: Any,
) -> str:
    """The text that precedes a user message: BOS, the system block and `history`, then the user-turn header.

    Without `system_prompt` the template's own default system block (if any) is kept, as the model saw it in
    alignment training. `history` (alternating user/assistant messages, ending with an assistant turn) gives the
    prefix of a later user turn, for multi-turn generation. `template_kwargs` override `chat_template.render`'s
    defaults (e.g. Llama's pinned `date_string`).
    """
    text = _render_with_sentinel_query(tokenizer, system_prompt, history, template_kwargs)
    # The sentinel query is the last message, so its last occurrence is the cut even if history quotes it.
    return text[: text.rindex(SENTINEL)]


def pre_query_ids(
    tokenizer: PreTrainedTokenizerBase,
    system_prompt: str | None = None,
    history: list[Message] | None = None,
    **template_kwargs: Any,
) -> list[int]:
    """Token ids of `pre_query_template`, as they appear inside a tokenised conversation.

    The template already wrote BOS, so no special token is added a second time. The ids are the tokens shared by
    the prefix alone and by a whole conversation: where a tokenizer merges the text before the query into the
    query's first token (Mistral's "[INST] " space joins the first word as "▁What"), that text is left for the
    model to generate, since a prompt ending in a lone "▁" token is one the model never saw in training.
    """
    text = _render_with_sentinel_query(tokenizer, system_prompt, history, template_kwargs)
    prefix_ids = encode(tokenizer, text[: text.rindex(SENTINEL)])
    conversation_ids = encode(tokenizer, text)
    shared = 0
    for prefix_id, conversation_id in zip(prefix_ids, conversation_ids, strict=False):
        if prefix_id != conversation_id:
            break
        shared += 1
    return prefix_ids[:shared]


def instruction_stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids that end an instruction: the token that closes a user turn, then EOS, without duplicates.

    A sampled instruction is complete when the model closes the user turn, which is not always the token that
    closes an assistant turn (Mistral closes a user turn with "[/INST]" and an answer with "</s>"). The closing
    token is the first special token the template writes after the user message; a template that closes a user
    turn with plain text (the fallback for tokenizers without a template) leaves EOS as the only stop.
    """
    text = render(tokenizer, [{"role": "user", "content": SENTINEL}], add_generation_prompt=True)
    specials = special_token_ids(tokenizer)
    closing = [i for i in encode(tokenizer, text[text.rindex(SENTINEL) + len(SENTINEL) :]) if i in specials][:1]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in closing:
        closing.append(tokenizer.eos_token_id)
    if not closing:
        raise ValueError(
            f"{_tokenizer_name(tokenizer)!r} has no EOS token and its chat template closes a user turn without a "
            "special token, so instruction generation could never stop."
        )
    return closing
