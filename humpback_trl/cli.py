"""The `humpback` console script: one subcommand per command module in `humpback_trl.scripts`.

Subcommands run in this process; for several processes use `accelerate launch -m humpback_trl.scripts.<command>`.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "sft": ("humpback_trl.scripts.sft", "train a forward or backward model (QLoRA by default)"),
    "corpus": ("humpback_trl.scripts.corpus", "split unlabeled documents into filtered, deduplicated segments"),
    "augment": ("humpback_trl.scripts.augment", "the backward model writes an instruction for every segment"),
    "curate": ("humpback_trl.scripts.curate", "a forward model scores candidate pairs and selects A4 / A5"),
    "magpie": ("humpback_trl.scripts.magpie", "an aligned chat model writes instructions and answers (MAGPIE)"),
    "run": ("humpback_trl.scripts.run", "the whole loop from a recipe folder: humpback run recipes/quickstart/"),
    "demo": ("humpback_trl.scripts.demo", "the whole loop on CPU with a tiny model and bundled data (no download)"),
    "chat": ("humpback_trl.scripts.chat", "answer prompts with a published (or local) Humpback adapter"),
}


def usage() -> str:
    lines = ["usage: humpback <command> [--config recipe.yaml] [--key value ...]", "", "commands:"]
    lines += [f"  {name:<10} {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] not in COMMANDS:
        sys.exit(f"humpback: unknown command {argv[0]!r}\n\n{usage()}")
    module = importlib.import_module(COMMANDS[argv[0]][0])
    module.run(argv[1:])


if __name__ == "__main__":
    main()
