"""Help for `humpback <command> --help` that prints in well under a second, without importing torch.

A command's options are the fields of the dataclasses its TrlParser reads, all declared in the torch-free
`humpback_trl.configs`: the help imports them and lists each field's name, type, default and `help` metadata, grouped
by the shared group (sampling, Hub, scoring...) that declares it. The trainer's dataclasses (TRL's SFTConfig,
DPOConfig, ModelConfig...) hold hundreds of options and import torch; they are summarised here, and `--help-all`
prints the full argparse help, which imports them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    name: str
    type: str
    default: str
    help: str


@dataclass(frozen=True)
class Command:
    """A `humpback` subcommand: its entry point, a one-line summary, the argument dataclasses of ours it parses
    (from `humpback_trl.configs`) and the trainer dataclasses it also accepts (named only)."""

    module: str
    summary: str
    arguments: tuple[type, ...] = ()
    trainer: tuple[str, ...] = ()
    usage: str = "[--config FILE] [--key value ...]"
    epilog: str = ""
    # The options of a command that parses with plain argparse (no recipe): its parser takes their help from here.
    options: tuple[Option, ...] = ()


LONGEST_DEFAULT = 60


def _default_of(item: dataclasses.Field) -> str:
    if item.default is not dataclasses.MISSING:
        value = item.default
    elif item.default_factory is not dataclasses.MISSING:
        value = item.default_factory()
    else:
        return "(required)"
    text = str(value)
    return text if len(text) <= LONGEST_DEFAULT else f"{text[: LONGEST_DEFAULT - 3]}..."


def _option(item: dataclasses.Field) -> Option:
    return Option(item.name, str(item.type), _default_of(item), item.metadata.get("help", ""))


def declaring_group(cls: type, name: str) -> type:
    """The class that first declares option `name` among `cls`'s bases (a command's re-declaration with its own
    default, `configs.default_for`, keeps the option in its group)."""
    return next(base for base in reversed(cls.__mro__) if name in vars(base).get("__annotations__", {}))


def _title(cls: type, group: type) -> str:
    return cls.__name__ if group is cls else f"{getattr(group, 'SECTION', group.__name__)} options"


def option_groups(cls: type) -> list[tuple[str, tuple[Option, ...]]]:
    """The options of the dataclass `cls` under a title: its own first, then those of the shared groups by the
    group's section (`SECTION`: generation, publishing, ...), sections in the order of its bases."""
    bases = (cls, *(base for base in cls.__mro__[1:] if dataclasses.is_dataclass(base)))
    sections: dict[str, list[Option]] = {_title(cls, group): [] for group in bases}
    for item in dataclasses.fields(cls):
        sections[_title(cls, declaring_group(cls, item.name))].append(_option(item))
    return [(title, tuple(options)) for title, options in sections.items() if options]


def dataclass_options(cls: type) -> tuple[Option, ...]:
    """Every option of the dataclass `cls`, in the order its help lists them."""
    return tuple(option for _, options in option_groups(cls) for option in options)


def _wrap(text: str, indent: int, width: int = 118) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width - indent:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines


CONFIG_LINE = "  --config FILE            a YAML recipe whose keys are the options below; --key value overrides it"


def _option_lines(option: Option) -> list[str]:
    flag = f"  --{option.name} {option.type.replace(' ', '')}"
    wrapped = _wrap(f"{option.help} (default: {option.default})", 27)
    head = [flag, f"{'':<26} {wrapped[0]}"] if len(flag) > 26 else [f"{flag:<26} {wrapped[0]}"]
    return head + [" " * 27 + line for line in wrapped[1:]]


def render_help(name: str, command: Command) -> str:
    out = [f"usage: humpback {name} {command.usage}", "", command.summary, "", "options:"]
    if command.arguments:
        out.append(CONFIG_LINE)
    for option in command.options:
        out += _option_lines(option)
    for cls in command.arguments:
        for group, options in option_groups(cls):
            out += ["", f"{group}:"]
            for option in options:
                out += _option_lines(option)
    if command.trainer:
        names = ", ".join(command.trainer)
        out += [
            "",
            f"Trainer options: every field of {names} (learning_rate, max_steps, per_device_train_batch_size, ...).",
            f"`humpback {name} --help-all` lists them all (it imports the trainer stack, which takes a while).",
        ]
    if command.epilog:
        out += ["", command.epilog]
    return "\n".join(out) + "\n"
