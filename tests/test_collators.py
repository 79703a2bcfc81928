"""SwappedFieldCollator: the loss covers exactly the completion and the end-of-turn token that closes it."""

import pytest
import torch
from conftest import REAL_TOKENIZERS, real_tokenizer_path
from transformers import AutoTokenizer

from humpback_trl import SEED_TAG, WEB_TAG, SwappedFieldCollator, Tagging
from humpback_trl.collators import IGNORE_INDEX
from humpback_trl.tiny import build_tokenizer

# Written from each family's template by hand, not read from the code under test.
END_OF_TURN = {
    "qwen2.5-instruct": "<|im_end|>",
    "llama-3.2-instruct": "<|eot_id|>",
    "mistral-instruct-v0.3": "</s>",
    "gemma-2-it": "<end_of_turn>",
    "smollm2-instruct": "<|im_end|>",
    "qwen3": "<|im_end|>",
    "tiny": "<|im_end|>",
}

ROW = {
    "instruction": "Give me three tips for keeping basil alive indoors.",
    "output": "1. Put it in the sunniest window you have.\n2. Water when the top soil is dry.\n"
    "3. Pinch off flowers early.",
    "source": "seed",
    "source_id": "row-7",
}


# Qwen3 is a hybrid-thinking family: it is held to the same oracle, in non-thinking mode.
@pytest.fixture(scope="module", params=[*REAL_TOKENIZERS, "qwen3", "tiny"])
def named_tokenizer(request, tiny_tokenizer):
    if request.param == "tiny":
        return "tiny", tiny_tokenizer
    return request.param, AutoTokenizer.from_pretrained(real_tokenizer_path(request.param))


def split(batch, tokenizer, i=0):
    ids, labels, mask = batch["input_ids"][i], batch["labels"][i], batch["attention_mask"][i]
    trained = labels != IGNORE_INDEX
    positions = trained.nonzero().flatten().tolist()
    assert positions == list(range(positions[0], positions[-1] + 1)), "trained tokens must be one contiguous span"
    assert torch.equal(labels[trained], ids[trained])
    prompt = tokenizer.decode(ids[: positions[0]], skip_special_tokens=False)
    completion = tokenizer.decode(ids[trained], skip_special_tokens=False)
    assert mask[: positions[-1] + 1].all() and not mask[positions[-1] + 1 :].any()
    return prompt, completion


def render_prompt(tokenizer, user, system=None):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    # enable_thinking is read by Qwen3's template only: its non-thinking prompt ends with an empty thinking block.
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, date_string="26 Jul 2024", enable_thinking=False
    )


@pytest.mark.parametrize("direction", ["backward", "forward"])
def test_labels_are_exactly_the_completion_and_its_end_of_turn(named_tokenizer, direction):
    name, tokenizer = named_tokenizer
    collator = SwappedFieldCollator(tokenizer, direction=direction)
    prompt, completion = split(collator([ROW]), tokenizer)
    target = ROW["instruction"] if direction == "backward" else ROW["output"]
    assert completion.lstrip() == target + END_OF_TURN[name]
    user = (
        collator.backward_prompt.format(output=ROW["output"])
        if direction == "backward"
        else ROW["instruction"] + "\n\n" + SEED_TAG
    )
    assert prompt == render_prompt(tokenizer, user)


def test_system_prompt_is_never_trained(named_tokenizer):
    name, tokenizer = named_tokenizer
    collator = SwappedFieldCollator(tokenizer, direction="forward", system_prompt="You are terse.")
    if name == "gemma-2-it":
        # The same clear error as MAGPIE's pre-query template, not the raw Jinja error.
        with pytest.raises(ValueError, match=r"gemma-2-it' has no system role \(it raised: System role not supported"):
            collator([ROW])
        return
    prompt, completion = split(collator([ROW]), tokenizer)
    assert "You are terse." in prompt and "You are terse." not in completion
    assert completion.lstrip() == ROW["output"] + END_OF_TURN[name]


def test_tagging_follows_source_and_can_be_switched_off(tiny_tokenizer):
    augmented = {**ROW, "source": "augmented"}
    tagged = SwappedFieldCollator(tiny_tokenizer, direction="forward")
    prompt, completion = split(tagged([augmented]), tiny_tokenizer)
    assert prompt.endswith(ROW["instruction"] + "\n\n" + WEB_TAG + "<|im_end|>\n<|im_start|>assistant\n")
    assert completion == ROW["output"] + "<|im_end|>"
    untagged = SwappedFieldCollator(tiny_tokenizer, direction="forward", tagging=Tagging(enabled=False))
    prompt, completion = split(untagged([augmented]), tiny_tokenizer)
    assert WEB_TAG not in prompt and SEED_TAG not in prompt
    assert completion == ROW["output"] + "<|im_end|>"
    backward = SwappedFieldCollator(tiny_tokenizer, direction="backward")
    prompt, completion = split(backward([augmented]), tiny_tokenizer)
    assert WEB_TAG not in prompt + completion and completion == ROW["instruction"] + "<|im_end|>"


def test_backward_truncation_cuts_the_output_never_the_instruction(named_tokenizer):
    name, tokenizer = named_tokenizer
    long_row = {**ROW, "output": " ".join(f"sentence {i} about basil care." for i in range(200))}
    full = SwappedFieldCollator(tokenizer, direction="backward", max_length=None).encode_row(long_row)
    collator = SwappedFieldCollator(tokenizer, direction="backward", max_length=len(full.input_ids) // 3)
    encoded = collator.encode_row(long_row)
    assert encoded.truncated and not full.truncated
    assert len(encoded.input_ids) <= collator.max_length
    prompt, completion = split(collator([long_row]), tokenizer)
    assert completion.lstrip() == ROW["instruction"] + END_OF_TURN[name]
    assert "sentence 0 about basil" in prompt and "sentence 199" not in prompt


def test_forward_truncation_drops_the_end_of_turn(tiny_tokenizer):
    long_row = {**ROW, "output": " ".join(f"Step {i}: water the basil." for i in range(100))}
    collator = SwappedFieldCollator(tiny_tokenizer, direction="forward", max_length=120)
    encoded = collator.encode_row(long_row)
    assert encoded.truncated and len(encoded.input_ids) <= 120
    prompt, completion = split(collator([long_row]), tiny_tokenizer)
    assert ROW["instruction"] in prompt
    assert long_row["output"].startswith(completion) and len(completion) > 20
    assert "<|im_end|>" not in completion


def test_instruction_that_cannot_fit_is_an_error_naming_the_row(tiny_tokenizer):
    collator = SwappedFieldCollator(tiny_tokenizer, direction="backward", max_length=30)
    with pytest.raises(ValueError, match="row-7.*instruction is never cut"):
        collator([{**ROW, "instruction": "word " * 200}])


def test_batch_is_right_padded_with_ignored_labels(tiny_tokenizer):
    short = {**ROW, "output": "Yes."}
    batch = SwappedFieldCollator(tiny_tokenizer, direction="forward")([ROW, short])
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    assert lengths[0] == batch["input_ids"].shape[1] > lengths[1]
    pad = tiny_tokenizer.pad_token_id
    assert (batch["input_ids"][1, lengths[1] :] == pad).all()
    assert (batch["labels"][1, lengths[1] :] == IGNORE_INDEX).all()
    assert split(batch, tiny_tokenizer, 1)[1] == "Yes.<|im_end|>"


def test_plain_fallback_without_chat_template(tiny_tokenizer):
    plain = build_tokenizer(["some words for a base model without a chat template"] * 3, vocab_size=300)
    plain.chat_template = None
    prompt, completion = split(SwappedFieldCollator(plain, direction="forward")([ROW]), plain)
    assert prompt == "### Instruction:\n" + ROW["instruction"] + "\n\n" + SEED_TAG + "\n\n### Response:\n"
    assert completion == ROW["output"] + "<|im_end|>"


def test_rejects_unknown_direction_and_prompt_without_placeholder(tiny_tokenizer):
    with pytest.raises(ValueError, match="direction"):
        SwappedFieldCollator(tiny_tokenizer, direction="sideways")
    with pytest.raises(ValueError, match=r"\{output\}"):
        SwappedFieldCollator(tiny_tokenizer, backward_prompt="Guess the question.")
