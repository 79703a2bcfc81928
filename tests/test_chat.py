"""`humpback chat` and `load_humpback`: a trained adapter answers with the training prompt layout and tags, on the
engine its option names."""

import json
import time

import pytest
import torch
import yaml
from peft import PeftModel
from sft_adapter import make_sft_adapter
from transformers import AutoModelForCausalLM

from humpback_trl import SEED_TAG, WEB_TAG, load_humpback
from humpback_trl.configs import SamplingConfig
from humpback_trl.errors import UserError
from humpback_trl.modeling import InferenceModelArguments, load_model
from humpback_trl.scripts import chat, sft


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("m2")
    seed = folder / "seed.jsonl"
    seed.write_text("".join(json.dumps({"instruction": f"Say {i}.", "output": f"{i}."}) + "\n" for i in range(8)))
    config = {
        "model_name_or_path": str(tiny_model_dir), "use_peft": True, "lora_r": 4, "lora_target_modules": ["all-linear"],
        "data": [str(seed)], "direction": "forward", "system_prompt": "Be brief.", "output_dir": str(folder / "out"),
        "use_cpu": True, "bf16": False, "max_steps": 1, "per_device_train_batch_size": 4, "save_strategy": "no",
        "report_to": "none",
    }  # fmt: skip
    (folder / "recipe.yaml").write_text(yaml.safe_dump(config))
    sft.run(["--config", str(folder / "recipe.yaml")])
    return folder / "out"


def test_both_tags_and_the_training_system_prompt_by_default(adapter):
    bot = load_humpback(str(adapter))
    assert bot.prompt("Hi") == (
        f"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi\n\n{SEED_TAG} {WEB_TAG}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert WEB_TAG not in load_humpback(str(adapter), tags="seed").prompt("Hi")
    assert "Hi<|im_end|>" in load_humpback(str(adapter), tags="none").prompt("Hi")
    with pytest.raises(ValueError, match="tags must be one of"):
        load_humpback(str(adapter), tags="web")


def test_cli_answers_prompts_from_arguments_and_a_file(adapter, tmp_path, capsys):
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"instruction": "Name a color."}) + "\n")
    answers = chat.run(["--adapter", str(adapter), "--prompt", "Say 3.", "--prompts_file", str(questions),
                        "--max_new_tokens", "4", "--greedy", "true"])  # fmt: skip
    assert len(answers) == 2
    printed = capsys.readouterr().out
    assert ">>> Say 3." in printed and ">>> Name a color." in printed
    with pytest.raises(ValueError, match="needs --adapter"):
        chat.run(["--model_name_or_path", "x", "--prompt", "hi"])


def test_chat_answers_on_the_engine_its_option_names(adapter):
    greedy = SamplingConfig(do_sample=False, max_new_tokens=4)
    bot = load_humpback(str(adapter), engine="transformers")
    assert bot.engine.name == "transformers"
    answers = chat.run(["--adapter", str(adapter), "--prompt", "Say 3.", "Say 5.", "--engine", "transformers",
                        "--max_new_tokens", "4", "--greedy", "true"])  # fmt: skip
    assert answers == bot.chat(["Say 3.", "Say 5."], greedy)
    # vLLM serves the adapter itself (its model starts on first use, so this needs no vLLM installed).
    on_vllm = load_humpback(str(adapter), engine="vllm")
    assert on_vllm.engine.name == "vllm" and on_vllm.engine.model.adapter == str(adapter)
    assert on_vllm.prompt("Hi") == bot.prompt("Hi")
    for call in (lambda: chat.run(["--adapter", str(adapter), "--prompt", "hi", "--engine", "tpu"]),
                 lambda: load_humpback(str(adapter), engine="tpu")):  # fmt: skip
        with pytest.raises(UserError, match="^engine must be one of") as error:
            call()
        assert str(error.value).endswith("got 'tpu'") and "\n" not in str(error.value)


def test_a_merged_adapter_gives_the_logits_of_base_plus_adapter(tiny_model_dir, tmp_path):
    folder = make_sft_adapter(tiny_model_dir, tmp_path / "m1")
    merged, _ = load_model(InferenceModelArguments(adapter=str(folder), dtype="float32"))
    assert not isinstance(merged, PeftModel), "a float base takes the adapter in"
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(folder)).eval()
    ids = torch.tensor([[1, 5, 9, 20, 33, 41, 7]])
    with torch.no_grad():
        expected, got = unmerged(ids).logits, merged(ids).logits
        with unmerged.disable_adapter():
            assert (expected - unmerged(ids).logits).abs().max() > 1e-3  # the adapter changes them
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    quantized, _ = load_model(InferenceModelArguments(adapter=str(folder), dtype="float32", load_in_4bit=True))
    assert isinstance(quantized, PeftModel), "a 4-bit base keeps the adapter beside it"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"adapter": "./missing/m2"}, "adapter: no such folder missing/m2"),
        ({"adapter": "outputs/run/m2"}, "adapter: no such folder outputs/run/m2"),
        ({"model_name_or_path": "~/no-such-base"}, "model_name_or_path: no such folder /"),
    ],
)
def test_a_missing_local_model_fails_at_once_naming_the_option(arguments, message):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=f"^{message}"):
        load_model(InferenceModelArguments(**arguments))
    assert time.perf_counter() - start < 5  # the Hub client retried such a name for about a minute
