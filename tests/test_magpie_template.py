import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

from collections.abc import Callable  # noqa: E402
from functools import cache  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast  # noqa: E402

from humpback_trl import chat_template  # noqa: E402
from humpback_trl.magpie_template import instruction_stop_token_ids, pre_query_ids, pre_query_template  # noqa: E402

TOKENIZERS = Path(__file__).resolve().parents[2] / "shared" / "tokenizers"

QWEN_SYSTEM = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
# Read from SmolLM2's chat template in tokenizer_config.json: it writes this block when messages[0] is not system.
SMOL_DEFAULT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
SMOL_SYSTEM = f"<|im_start|>system\n{SMOL_DEFAULT}<|im_end|>\n"
LLAMA_DATE_LINES = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
LLAMA_SYSTEM_HEADER = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
LLAMA_USER = "<|start_header_id|>user<|end_header_id|>\n\n"
LLAMA_ONE_TURN = f"{LLAMA_USER}Q1<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nA1<|eot_id|>"

ONE_TURN = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}]

# name: (no system prompt, system prompt "SYS" or None where the template has no system role, after ONE_TURN)
EXPECTED_PREFIXES = {
    "qwen2.5-instruct": (
        QWEN_SYSTEM + "<|im_start|>user\n",
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\n",
        QWEN_SYSTEM + "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\n",
    ),
    "llama-3.2-instruct": (
        LLAMA_SYSTEM_HEADER + LLAMA_DATE_LINES + "<|eot_id|>" + LLAMA_USER,
        LLAMA_SYSTEM_HEADER + LLAMA_DATE_LINES + "SYS<|eot_id|>" + LLAMA_USER,
        LLAMA_SYSTEM_HEADER + LLAMA_DATE_LINES + "<|eot_id|>" + LLAMA_ONE_TURN + LLAMA_USER,
    ),
    "mistral-instruct-v0.3": (
        "<s>[INST] ",
        "<s>[INST] SYS\n\n",
        "<s>[INST] Q1[/INST] A1</s>[INST] ",
    ),
    "gemma-2-it": (
        "<bos><start_of_turn>user\n",
        None,
        "<bos><start_of_turn>user\nQ1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n<start_of_turn>user\n",
    ),
    "smollm2-instruct": (
        SMOL_SYSTEM + "<|im_start|>user\n",
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\n",
        SMOL_SYSTEM + "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\n",
    ),
    # Qwen3 writes no default system block, and no thinking block in an assistant turn before the last query.
    "qwen3": (
        "<|im_start|>user\n",
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\n",
        "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\n",
    ),
}

# name: (the token that closes a user turn, eos)
EXPECTED_INSTRUCTION_STOPS = {
    "qwen2.5-instruct": ("<|im_end|>", "<|im_end|>"),
    "llama-3.2-instruct": ("<|eot_id|>", "<|eot_id|>"),
    "mistral-instruct-v0.3": ("[/INST]", "</s>"),
    "gemma-2-it": ("<end_of_turn>", "<eos>"),
    "smollm2-instruct": ("<|im_end|>", "<|im_end|>"),
    "qwen3": ("<|im_end|>", "<|im_end|>"),
}


@pytest.fixture(scope="module")
def load() -> Callable[[str], PreTrainedTokenizerBase]:
    if not TOKENIZERS.is_dir():
        pytest.skip("../shared/tokenizers not found (tokenizer test data lives beside the checkout)")
    return cache(lambda name: AutoTokenizer.from_pretrained(TOKENIZERS / name))


@pytest.mark.parametrize("name", EXPECTED_PREFIXES)
def test_prefix_without_system_prompt(load, name: str) -> None:
    assert pre_query_template(load(name)) == EXPECTED_PREFIXES[name][0]


def test_smollm2_default_system_block_comes_from_its_template(load) -> None:
    tokenizer = load("smollm2-instruct")
    prefix = pre_query_template(tokenizer)
    assert SMOL_DEFAULT in tokenizer.chat_template
    assert prefix.startswith("<|im_start|>system\n")
    assert prefix.endswith("<|im_start|>user\n")


@pytest.mark.parametrize("name", [name for name, expected in EXPECTED_PREFIXES.items() if expected[1] is not None])
def test_prefix_with_system_prompt_replaces_default_block(load, name: str) -> None:
    assert pre_query_template(load(name), system_prompt="SYS") == EXPECTED_PREFIXES[name][1]


def test_template_without_system_role_raises_clear_error(load) -> None:
    with pytest.raises(ValueError, match=r"gemma-2-it.*has no system role"):
        pre_query_template(load("gemma-2-it"), system_prompt="SYS")


@pytest.mark.parametrize("name", EXPECTED_PREFIXES)
def test_prefix_after_one_turn(load, name: str) -> None:
    assert pre_query_template(load(name), history=ONE_TURN) == EXPECTED_PREFIXES[name][2]


def test_mistral_system_prompt_joins_the_last_user_turn(load) -> None:
    prefix = pre_query_template(load("mistral-instruct-v0.3"), system_prompt="SYS", history=ONE_TURN)
    assert prefix == "<s>[INST] Q1[/INST] A1</s>[INST] SYS\n\n"


def test_template_kwargs_override_the_pinned_date(load) -> None:
    prefix = pre_query_template(load("llama-3.2-instruct"), date_string="01 Jan 2025")
    assert "Today Date: 01 Jan 2025\n" in prefix
    assert "26 Jul 2024" not in prefix


@pytest.mark.parametrize("name", ["llama-3.2-instruct", "mistral-instruct-v0.3", "gemma-2-it"])
def test_pre_query_ids_hold_exactly_one_bos(load, name: str) -> None:
    tokenizer = load(name)
    ids = pre_query_ids(tokenizer)
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1


def test_qwen_pre_query_ids_hold_no_bos(load) -> None:
    tokenizer = load("qwen2.5-instruct")
    assert tokenizer.bos_token is None
    ids = pre_query_ids(tokenizer)
    assert tokenizer.decode(ids) == EXPECTED_PREFIXES["qwen2.5-instruct"][0]


def test_smollm2_first_token_is_not_doubled(load) -> None:
    # SmolLM2's bos_token is "<|im_start|>", which the template already writes; adding it again would double it.
    tokenizer = load("smollm2-instruct")
    ids = pre_query_ids(tokenizer)
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.bos_token == "<|im_start|>"
    assert ids[:2] == [im_start, *chat_template.encode(tokenizer, "system")]
    assert ids.count(im_start) == 2


@pytest.mark.parametrize("name", ["qwen2.5-instruct", "llama-3.2-instruct", "gemma-2-it", "smollm2-instruct"])
def test_pre_query_ids_tokenise_the_prefix_text(load, name: str) -> None:
    tokenizer = load(name)
    for history in (None, ONE_TURN):
        ids = pre_query_ids(tokenizer, history=history)
        assert ids == chat_template.encode(tokenizer, pre_query_template(tokenizer, history=history))


@pytest.mark.parametrize("name", EXPECTED_PREFIXES)
def test_pre_query_ids_start_a_real_conversation(load, name: str) -> None:
    tokenizer = load(name)
    conversation = chat_template.render(tokenizer, [*ONE_TURN, {"role": "user", "content": "What is a whale?"}])
    ids = pre_query_ids(tokenizer, history=ONE_TURN)
    assert chat_template.encode(tokenizer, conversation)[: len(ids)] == ids


def test_mistral_leaves_the_space_before_the_query_to_the_model(load) -> None:
    # "[INST] What" tokenises as "[INST]", "▁What": a prompt ending in a lone "▁" token is out of distribution.
    tokenizer = load("mistral-instruct-v0.3")
    ids = pre_query_ids(tokenizer)
    assert ids == [tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("[INST]")]


@pytest.mark.parametrize("name", EXPECTED_INSTRUCTION_STOPS)
def test_instruction_stop_token_ids(load, name: str) -> None:
    tokenizer = load(name)
    closing, eos = EXPECTED_INSTRUCTION_STOPS[name]
    expected = list(dict.fromkeys(tokenizer.convert_tokens_to_ids([closing, eos])))
    assert tokenizer.eos_token == eos
    assert instruction_stop_token_ids(tokenizer) == expected


def test_mistral_instruction_stops_at_user_turn_close_not_answer_close(load) -> None:
    tokenizer = load("mistral-instruct-v0.3")
    inst_close = tokenizer.convert_tokens_to_ids("[/INST]")
    assert inst_close in chat_template.special_token_ids(tokenizer)
    assert inst_close in instruction_stop_token_ids(tokenizer)
    assert inst_close not in chat_template.stop_token_ids(tokenizer)


@pytest.mark.parametrize(
    ("history", "message"),
    [
        ([{"role": "user", "content": "Q1"}], "must end with an assistant turn"),
        ([{"role": "assistant", "content": "A1"}], r"history\[0\] must be .*'user'"),
        ([*ONE_TURN, {"role": "user", "content": "Q2"}, {"role": "user", "content": "Q3"}], r"history\[3\]"),
        ([{"role": "system", "content": "SYS"}, *ONE_TURN], "pass a system prompt as system_prompt"),
        ([{"role": "user"}, {"role": "assistant", "content": "A1"}], r"history\[0\]"),
    ],
)
def test_history_must_alternate_and_end_with_assistant(history: list[dict], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pre_query_template(_plain_tokenizer(), history=history)


def _plain_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny word-level tokenizer with no chat template, so rendering falls back to PLAIN_CHAT_TEMPLATE."""
    specials = ["<unk>", "<pad>", "<bos>", "<eos>"]
    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["### Instruction:", "### Response:", "Humpback whales sing long songs.", "Q1 A1 SYS"]
    backend.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=specials))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def test_plain_fallback_prefix() -> None:
    tokenizer = _plain_tokenizer()
    assert not tokenizer.chat_template
    assert pre_query_template(tokenizer) == "<bos>### Instruction:\n"
    assert pre_query_template(tokenizer, system_prompt="SYS") == "<bos>SYS\n\n### Instruction:\n"
    assert pre_query_template(tokenizer, history=ONE_TURN) == (
        "<bos>### Instruction:\nQ1\n\n### Response:\nA1<eos>\n\n### Instruction:\n"
    )
    ids = pre_query_ids(tokenizer)
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1


def test_plain_fallback_instruction_stops_at_eos_only() -> None:
    # The fallback closes a user turn with plain text, so EOS is the only token generation can stop on.
    tokenizer = _plain_tokenizer()
    assert instruction_stop_token_ids(tokenizer) == [tokenizer.eos_token_id]


def test_template_that_drops_the_user_message_raises() -> None:
    tokenizer = _plain_tokenizer()
    tokenizer.chat_template = "{% for message in messages %}<{{ message['role'] }}>{% endfor %}"
    with pytest.raises(ValueError, match="does not copy the user message"):
        pre_query_template(tokenizer)
