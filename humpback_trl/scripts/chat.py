"""`humpback chat`: answer prompts with a Humpback adapter (a local folder or a Hub repo such as ORG/humpback-m2).

humpback chat --adapter ORG/REPO --prompt "Explain tides." "Write a haiku."
humpback chat --adapter outputs/quickstart/m2 --prompts_file questions.txt --load_in_4bit true
humpback chat --adapter ORG/REPO --engine vllm --prompt "Explain tides."
"""

from __future__ import annotations

import logging

from trl import TrlParser

from humpback_trl.chat import ChatArguments, load_humpback, read_prompts
from humpback_trl.errors import UserError
from humpback_trl.logs import configure_logging
from humpback_trl.modeling import InferenceModelArguments


def make_parser() -> TrlParser:
    return TrlParser((ChatArguments, InferenceModelArguments))


def run(argv: list[str] | None = None) -> list[str]:
    configure_logging(logging.INFO)
    args, model_args = make_parser().parse_args_and_config(argv)
    if not model_args.adapter:
        raise UserError("humpback chat needs --adapter (a local folder or a Hub repo id)")
    prompts = read_prompts(args)
    bot = load_humpback(
        model_args.adapter,
        model_args.model_name_or_path,
        model_args.load_in_4bit,
        args.tags,
        dtype=model_args.dtype,
        revision=model_args.model_revision,
        trust_remote_code=model_args.trust_remote_code,
        engine=args.engine,
    )
    answers = bot.chat(prompts, args.sampling)
    for prompt, answer in zip(prompts, answers, strict=True):
        print(f">>> {prompt}\n{answer}\n")
    return answers


if __name__ == "__main__":
    from humpback_trl.cli import run_command

    run_command("chat")
