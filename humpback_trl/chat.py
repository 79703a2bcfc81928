"""Answer prompts with a Humpback adapter (a local folder or a Hub repo such as ORG/humpback-m2).

    humpback chat --adapter ORG/REPO --prompt "Explain tides." "Write a haiku."
    humpback chat --adapter outputs/quickstart/m2 --prompts_file questions.txt --load_in_4bit true
    humpback chat --adapter ORG/REPO --engine vllm --prompt "Explain tides."

    from humpback_trl import load_humpback
    bot = load_humpback("ORG/REPO")
    print(bot.chat(["Explain tides."])[0])

The base model comes from the adapter's config; `engine` (auto, transformers or vllm) is the engine that answers
(`engines.load_engine`). Prompts are built by the collator the adapter was trained with (its saved prompt settings),
with both source tags appended by default: the paper's best inference setting (Table 8: 66.47 win rate with both tags
vs 62.70 without). `adapter_prompt` is that prompt, which the evaluation's answers use too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from humpback_trl.chat_template import render
from humpback_trl.collators import SwappedFieldCollator, load_collator
from humpback_trl.configs import TAG_CHOICES, ChatArguments, SamplingConfig, check_engine, check_tags
from humpback_trl.engines import Engine, load_engine
from humpback_trl.errors import MissingFileError, UserError
from humpback_trl.modeling import InferenceModelArguments, adapter_folder, load_tokenizer
from humpback_trl.tagging import INFERENCE_SOURCES


def adapter_prompt(
    tokenizer: PreTrainedTokenizerBase, collator: SwappedFieldCollator, instruction: str, tags: tuple[str, ...]
) -> str:
    """The rendered prompt an adapter answers `instruction` from: its training layout (the collator of its saved
    prompt settings) with the source `tags`, up to the assistant turn."""
    messages = collator.prompt_messages({"instruction": instruction, "source": tags}, "")
    return render(tokenizer, messages, add_generation_prompt=True, **collator.template_kwargs)


@dataclass
class HumpbackChat:
    engine: Engine
    tokenizer: PreTrainedTokenizerBase
    collator: SwappedFieldCollator
    tags: tuple[str, ...] = INFERENCE_SOURCES

    def prompt(self, instruction: str) -> str:
        return adapter_prompt(self.tokenizer, self.collator, instruction, self.tags)

    def chat(self, instructions: Sequence[str], sampling: SamplingConfig | None = None) -> list[str]:
        prompts = [self.prompt(instruction) for instruction in instructions]
        sampling = sampling or SamplingConfig(max_new_tokens=512)
        return self.engine.generate(self.tokenizer, prompts, sampling, show_progress=len(prompts) > 1)


def load_humpback(
    adapter: str,
    base_model: str | None = None,
    load_in_4bit: bool = False,
    tags: str = "both",
    dtype: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    engine: str = "auto",
) -> HumpbackChat:
    """Load a base model plus a Humpback adapter on `engine` (auto | transformers | vllm), ready to `chat`. `tags`:
    both | seed | augmented | none."""
    check_tags(tags)
    check_engine(engine)
    args = InferenceModelArguments(
        model_name_or_path=base_model,
        adapter=adapter,
        load_in_4bit=load_in_4bit,
        dtype=dtype,
        model_revision=revision,
        trust_remote_code=trust_remote_code,
    )
    tokenizer = load_tokenizer(args)
    collator = load_collator(tokenizer, adapter_folder(args), "forward")
    return HumpbackChat(load_engine(args, engine), tokenizer, collator, TAG_CHOICES[tags])


def jsonl_instruction(line: str, path: str, number: int) -> str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: line {number}, column {error.colno}: not valid JSON ({error.msg})") from None
    if not isinstance(row, dict) or "instruction" not in row:
        raise UserError(f"{path}: line {number} has no 'instruction' field")
    return row["instruction"]


def read_prompts(args: ChatArguments) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise MissingFileError(f"prompts_file {path} does not exist")
        # Numbered before blank lines are dropped, so an error names the line as an editor shows it.
        lines = [(number, line) for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)]
        lines = [(number, line) for number, line in lines if line.strip()]
        if path.suffix == ".jsonl":
            prompts += [jsonl_instruction(line, args.prompts_file, number) for number, line in lines]
        else:
            prompts += [line for _, line in lines]
    if not prompts:
        raise UserError("Give prompts with --prompt TEXT [TEXT ...] or --prompts_file FILE")
    return prompts
