"""MAGPIE's pre-query template (Xu et al. 2024, arXiv 2406.08464), derived from the chat template.

An aligned model given only the text its chat template puts before a user message (the "pre-query template")
samples a plausible user instruction; rendering that instruction back through the template yields a response.

The official configs hand-write the pre-query template per model family. Here it is derived by rendering a
conversation whose last user message is a sentinel and cutting at the sentinel, so the template's own default
system block (Qwen2.5, SmolLM2), its dated system block (Llama 3.x, pinned by `chat_template.render`) and its BOS
come out exactly as the model saw them in alignment training, for any tokenizer that ships a template.
The same derivation tells where a sampled instruction ends (the token that closes a user turn) and whether it leaked
chat markup (the model wrote past the end of its turn).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from transformers import PreTrainedTokenizerBase

from humpback_trl.chat_template import (
    SENTINEL,
    Message,
    encode,
    render,
    special_token_ids,
    strip_thinking,
    tokenizer_name,
)
from humpback_trl.errors import UserError

_TURN_ROLES = ("user", "assistant")


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
    # render raises one clear error for a template without a system role (Gemma-2, Mixtral).
    text = render(tokenizer, system + turns, **template_kwargs)
    if SENTINEL not in text:
        raise UserError(
            f"The chat template of {tokenizer_name(tokenizer)!r} does not copy the user message into its output, "
            "so the text before a user message cannot be found."
        )
    return text


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
        raise UserError(
            f"{tokenizer_name(tokenizer)!r} has no EOS token and its chat template closes a user turn without a "
            "special token, so instruction generation could never stop."
        )
    return closing


def instruction_prompt(
    tokenizer: PreTrainedTokenizerBase,
    system_prompt: str | None = None,
    history: list[Message] | None = None,
) -> str:
    """`pre_query_ids` as text that `chat_template.encode` turns back into exactly those ids.

    The generation engine takes rendered text, and the template text is not always what the model should see: for
    Mistral "<s>[INST] " ends in a space the model writes itself (see `pre_query_ids`), so the ids are decoded.
    """
    ids = pre_query_ids(tokenizer, system_prompt, history)
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if encode(tokenizer, text) != ids:
        raise UserError(
            f"The pre-query ids of {tokenizer_name(tokenizer)!r} do not survive decoding and encoding again "
            f"({text!r}), so they cannot be passed to the generation engine as text."
        )
    return text


# Chat markup of the common families, on top of the tokenizer's own special tokens: a model may spell another
# family's markup, or its own in plain pieces.
MARKUP = ("<|", "|>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "<start_of_turn>", "<end_of_turn>")
ROLE_NAMES = ("user", "assistant", "system")


def _header_line(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    """The last non-blank line of `text` without its special tokens: the role header a template writes there."""
    decoded = tokenizer.decode(encode(tokenizer, text), skip_special_tokens=True, clean_up_tokenization_spaces=False)
    # A thinking template's generation prompt ends with its empty thinking block, after the header.
    lines = strip_thinking(tokenizer, [decoded])[0][0].splitlines()
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def leak_check(tokenizer: PreTrainedTokenizerBase) -> Callable[[str], bool]:
    """Whether an instruction holds chat markup or a role header, i.e. the model wrote past the end of the user turn.

    Generated text is decoded without special tokens, so a model that opens the assistant turn itself leaves the
    header's words ("assistant", Gemma's "model") on a line of their own. Markers: the tokenizer's special tokens
    and MARKUP anywhere; a line that starts with a role name or the template's user or assistant header, followed by
    a colon or the end of the line.
    """
    # A blank special token would match every instruction.
    specials = {t for t in tokenizer.convert_ids_to_tokens(sorted(special_token_ids(tokenizer))) if t.strip()}
    markers = re.compile("|".join(map(re.escape, sorted({*MARKUP, *specials}, key=len, reverse=True))))
    generation = render(tokenizer, [{"role": "user", "content": SENTINEL}], add_generation_prompt=True)
    headers = {
        *ROLE_NAMES,
        _header_line(tokenizer, pre_query_template(tokenizer)),
        _header_line(tokenizer, generation[generation.rindex(SENTINEL) + len(SENTINEL) :]),
    }
    names = "|".join(re.escape(header.rstrip(":")) for header in sorted(headers - {""}))
    role_line = re.compile(rf"^[ \t]*(?:{names})[ \t]*(?::|$)", re.IGNORECASE | re.MULTILINE)
    return lambda text: bool(markers.search(text) or role_line.search(text))
