"""The traps a real 8B run hits first (issue 11): the learning rate of adapters, the prompt format of saved adapters,
SFTConfig keys the collator path ignores, dict chat templates, dataset privacy, Hub tokens and remote code."""

import copy
import json
import shutil

import pytest
from peft import AutoPeftModelForCausalLM
from test_sft import recipe
from transformers import AutoTokenizer, GenerationConfig, pipeline
from trl import SFTConfig

from humpback_trl.chat_template import PLAIN_CHAT_TEMPLATE, render, turn_end, use_template
from humpback_trl.collators import SwappedFieldCollator
from humpback_trl.schedule import LORA_LEARNING_RATE, PAPER_LEARNING_RATE, apply_paper_schedule
from humpback_trl.scripts import sft
from humpback_trl.training import IGNORED_SFT_KEYS

TOKEN = "hf_SecretTokenThatMustNeverBeSaved"
ROW = {"instruction": "Name a colour.", "output": "Blue is a colour.", "source": "seed"}


@pytest.fixture(scope="module")
def tiny_path(tiny_model_dir):
    return tiny_model_dir


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    rows = [{"instruction": f"What is {i} plus {i}?", "output": f"It is {2 * i}.", "id": f"p{i}"} for i in range(8)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def variant(tiny_path, folder, **tokenizer_changes):
    """A copy of the tiny model whose tokenizer is changed, e.g. a Qwen2.5-base-like EOS or no template (Llama);
    the model's own configs follow the tokenizer's EOS, as a real base model's do."""
    shutil.copytree(tiny_path, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for key, value in tokenizer_changes.items():
        setattr(tokenizer, key, value)
    tokenizer.save_pretrained(folder)
    for name in ("config.json", "generation_config.json"):
        config = json.loads((folder / name).read_text())
        config["eos_token_id"] = tokenizer.eos_token_id
        (folder / name).write_text(json.dumps(config))
    if tokenizer_changes.get("chat_template", "") is None:
        # save_pretrained leaves the copied template file in place.
        (folder / "chat_template.jinja").unlink()
    return folder


# ---- 1. learning rate ----------------------------------------------------------------------------------------------


def schedule_args(**values) -> SFTConfig:
    return SFTConfig(output_dir="unused", per_device_train_batch_size=4, use_cpu=True, report_to="none", **values)


def test_adapters_get_the_lora_peak_and_full_fine_tuning_the_papers(caplog):
    lora, full = schedule_args(), schedule_args()
    with caplog.at_level("INFO", logger="humpback_trl"):
        apply_paper_schedule(lora, 3200, 1, adapter=True)
    apply_paper_schedule(full, 3200, 1, adapter=False)
    assert (lora.learning_rate, full.learning_rate) == (LORA_LEARNING_RATE, PAPER_LEARNING_RATE) == (2e-4, 1e-5)
    for args in (lora, full):
        assert (args.max_steps, args.gradient_accumulation_steps, args.weight_decay) == (500, 8, 0.1)
        assert args.lr_scheduler_kwargs["min_lr_ratio"] == 0.9
    assert "Dettmers et al. 2023" in caplog.text and "peak lr 2.0e-04 -> floor 1.8e-04" in caplog.text
    for key in ("learning_rate", "weight_decay", "gradient_accumulation_steps", "lr_scheduler_type", "max_steps"):
        assert f"  {key} = " in caplog.text


def test_values_the_user_set_are_kept(caplog):
    # Set to values other than the defaults (seen by comparison) or equal to them (seen in the recipe's keys).
    args = schedule_args(learning_rate=3e-4, lr_scheduler_type="cosine", weight_decay=0.0)
    with caplog.at_level("INFO", logger="humpback_trl"):
        applied = apply_paper_schedule(args, 3200, 1, adapter=True, user_keys={"weight_decay"})
    assert (args.learning_rate, args.lr_scheduler_type, args.weight_decay, args.lr_scheduler_kwargs) == (
        3e-4,
        "cosine",
        0.0,
        None,
    )
    assert set(applied) == {"max_steps", "gradient_accumulation_steps", "warmup_steps"}
    assert "learning_rate = 0.0003 (kept: set by you)" in caplog.text
    assert "(your learning_rate): peak lr 3.0e-04 with your cosine scheduler" in caplog.text


def test_recipe_learning_rate_survives_the_schedule_end_to_end(tmp_path, tiny_path, data_path):
    config = recipe(tmp_path, tiny_path, data_path, load_in_4bit=False, max_steps=2, paper_schedule=True)
    trainer = sft.run(["--config", config, "--weight_decay", "0.0", "--per_device_train_batch_size", "4"])
    assert (trainer.args.learning_rate, trainer.args.lr_scheduler_type.value) == (5e-3, "constant")
    assert (trainer.args.weight_decay, trainer.args.gradient_accumulation_steps) == (0.0, 2)


# ---- 2. saved adapters carry their prompt format -------------------------------------------------------------------


def test_pipeline_alone_uses_the_saved_template_and_stops_at_the_end_of_turn(tmp_path, tiny_path, data_path):
    # Qwen2.5 base ships EOS <|endoftext|> (tokenizer, config and generation config) while its ChatML turns end with
    # <|im_end|>.
    base = variant(tiny_path, tmp_path / "qwen-like", eos_token="<|endoftext|>")
    config = recipe(tmp_path, base, data_path, load_in_4bit=False, max_steps=1, direction="forward")
    trainer = sft.run(["--config", config])
    out = tmp_path / "out"

    # No project code from here on: peft, transformers and the adapter folder.
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoPeftModelForCausalLM.from_pretrained(out)
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template == trainer.processing_class.chat_template
    # transformers takes an adapter's generation config from its base model, so it is read from the adapter folder.
    generation_config = GenerationConfig.from_pretrained(out)
    assert generation_config.eos_token_id == [end_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    generate = pipeline("text-generation", model=model, tokenizer=tokenizer)
    messages = [{"role": "user", "content": "Name a colour. [seed]"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nName a colour. [seed]<|im_end|>\n<|im_start|>assistant\n"
    # A bias that makes <|im_end|> every step's choice: generation must stop after it instead of running on.
    kwargs = {"max_new_tokens": 20, "do_sample": False, "sequence_bias": {(end_id,): 100.0}, "return_tensors": True}
    ids = generate(messages, generation_config=generation_config, **kwargs)[0]["generated_token_ids"]
    assert ids[len(tokenizer(prompt)["input_ids"]) :] == [end_id]


def test_the_plain_fallback_template_is_saved_with_the_adapter(tmp_path, tiny_path, data_path):
    base = variant(tiny_path, tmp_path / "llama-like", chat_template=None)
    sft.run(["--config", recipe(tmp_path, base, data_path, load_in_4bit=False, max_steps=1)])
    saved = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert saved.chat_template == PLAIN_CHAT_TEMPLATE
    text = saved.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("### Instruction:\nHi\n\n### Response:\n")


# ---- 4. SFTConfig keys the collator path cannot honour -------------------------------------------------------------

REFUSED = {
    "packing": True,
    "padding_free": True,
    "completion_only_loss": False,
    "assistant_only_loss": True,
    "eos_token": "<|endoftext|>",
    "chat_template_path": "template.jinja",
    "truncation_mode": "keep_end",
    "dataset_num_proc": 4,
    "dataset_text_field": "content",
}


def test_every_ignored_key_has_a_refusal_case():
    assert set(REFUSED) == set(IGNORED_SFT_KEYS)


@pytest.mark.parametrize(("key", "value"), REFUSED.items())
def test_ignored_sft_keys_are_refused_at_parse_time(tmp_path, tiny_path, data_path, key, value):
    with pytest.raises(ValueError, match=rf"^{key}=.* is not supported by humpback sft \(.+\)\.$"):
        sft.run(["--config", recipe(tmp_path, tiny_path, data_path, **{key: value})])
    assert not (tmp_path / "out").exists()


def test_pad_to_multiple_of_reaches_the_collator(tmp_path, tiny_path, data_path):
    config = recipe(tmp_path, tiny_path, data_path, load_in_4bit=False, max_steps=1, pad_to_multiple_of=64)
    trainer = sft.run(["--config", config])
    assert trainer.data_collator.pad_to_multiple_of == 64
    width = len(trainer.data_collator.encode_row(ROW).input_ids)
    assert width % 64 and trainer.data_collator([ROW])["input_ids"].shape[1] == -(-width // 64) * 64


# ---- 6. dict chat templates ------------------------------------------------------------------------------------------


def test_dict_templates_collate_with_the_default_or_a_named_one(tiny_tokenizer):
    # Command R+ ships {"default", "tool_use", "rag"}.
    tokenizer = copy.deepcopy(tiny_tokenizer)
    rag = "{{ 'RAG' }}{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}"
    tokenizer.chat_template = {"default": tiny_tokenizer.chat_template, "rag": rag}
    batch = SwappedFieldCollator(tokenizer, direction="forward")([ROW])
    assert tokenizer.decode(batch["input_ids"][0]).startswith("<|im_start|>user\nName a colour.")
    assert turn_end(tokenizer).close == "<|im_end|>"

    use_template(tokenizer, "rag")
    assert render(tokenizer, [{"role": "user", "content": "x"}]) == "RAGx<|im_end|>"
    with pytest.raises(ValueError, match="single template"):
        use_template(tokenizer, "rag")


def test_a_missing_named_template_and_a_refused_system_prompt_are_clear_errors(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = {"default": tiny_tokenizer.chat_template}
    with pytest.raises(ValueError, match=r"holds the chat templates \['default'\] and none is named 'tool_use'"):
        use_template(tokenizer, "tool_use")
    # Mixtral's template raises on a system message.
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% elif m['role'] == 'user' %}[INST]{{ m['content'] }}[/INST]{% else %}{{ m['content'] }}<|im_end|>{% endif %}"
        "{% endfor %}"
    )
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    with pytest.raises(ValueError, match="has no system role .*System role not supported.*leave the system prompt"):
        render(tokenizer, messages)
    with pytest.raises(ValueError, match="has no system role"):
        SwappedFieldCollator(tokenizer, direction="forward", system_prompt="Be brief.")([ROW])


# ---- 7. Hub privacy, tokens, remote code -------------------------------------------------------------------------


def test_dataset_pushes_follow_hub_private_repo(tmp_path, tiny_path, data_path, monkeypatch):
    from datasets import Dataset
    from huggingface_hub import DatasetCard, ModelCard
    from transformers import Trainer

    pushed = []
    monkeypatch.setattr(
        Trainer, "init_hf_repo", lambda self, token=None: setattr(self, "hub_model_id", self.args.hub_model_id)
    )
    monkeypatch.setattr(Trainer, "push_to_hub", lambda self, **kw: None)
    monkeypatch.setattr(ModelCard, "push_to_hub", lambda self, repo, **kw: None)
    monkeypatch.setattr(Dataset, "push_to_hub", lambda self, repo, **kw: pushed.append((repo, kw["private"])))
    monkeypatch.setattr(DatasetCard, "push_to_hub", lambda self, repo, **kw: pushed.append((repo, str(self))))
    config = recipe(tmp_path, tiny_path, data_path, load_in_4bit=False, max_steps=1, hub_prefix="me/hb")
    sft.run(["--config", config, "--push_to_hub", "true", "--hub_private_repo", "true"])
    assert pushed[0] == ("me/hb-myx-data", True)
    assert "**Visibility on the Hub**: private" in pushed[1][1]

    from humpback_trl.augment import AugmentArguments, candidate_outputs
    from humpback_trl.modeling import InferenceModelArguments
    from humpback_trl.stage import write_outputs

    pushed.clear()
    args = AugmentArguments(corpus="c", hub_prefix="me/hb", push_to_hub=True, hub_private_repo=True)
    candidates = Dataset.from_dict({"instruction": ["i"], "output": ["o"], "source": ["augmented"], "source_id": ["1"]})
    outputs = candidate_outputs(candidates, args, InferenceModelArguments(adapter="me/hb-myx"), {"segments": 1})
    write_outputs(outputs, tmp_path / "augment")
    assert pushed[0] == ("me/hb-candidates", True) and "Visibility on the Hub**: private" in pushed[1][1]


@pytest.mark.parametrize("where", ["command line", "recipe"])
def test_hub_token_is_refused_and_never_saved(tmp_path, tiny_path, data_path, where):
    extra = {"hub_token": TOKEN} if where == "recipe" else {}
    argv = ["--config", recipe(tmp_path, tiny_path, data_path, load_in_4bit=False, max_steps=1, **extra)]
    argv += ["--hub_token", TOKEN] if where == "command line" else []
    with pytest.raises(ValueError, match="hub_token is refused.*huggingface-cli login.*HF_TOKEN"):
        sft.run(argv)
    saved = [path for path in tmp_path.rglob("*") if path.is_file() and path.name != "recipe.yaml"]
    assert not [path for path in saved if TOKEN.encode() in path.read_bytes()]


def test_trust_remote_code_reaches_the_loaders(tmp_path, tiny_path, data_path, monkeypatch):
    import transformers

    seen = []
    original = transformers.AutoTokenizer.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", classmethod(spy))
    config = recipe(tmp_path, tiny_path, data_path, load_in_4bit=False, max_steps=1, trust_remote_code=True)
    trainer = sft.run(["--config", config])
    assert seen[0] is True and trainer.args.trust_remote_code is True
    from humpback_trl.modeling import InferenceModelArguments, load_tokenizer

    seen.clear()
    load_tokenizer(InferenceModelArguments(model_name_or_path=str(tiny_path), trust_remote_code=True))
    assert seen == [True]
