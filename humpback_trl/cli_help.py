"""Help for `humpback <command> --help` that prints in well under a second, without importing torch.

A command's options are the fields of the dataclasses its TrlParser reads. Importing them would import TRL,
transformers and torch (10-25 s on a small machine), so our own dataclasses are read from their source with `ast`:
name, type, default and the `help` metadata of every field. The trainer's dataclasses (TRL's SFTConfig, DPOConfig,
ModelConfig...) hold hundreds of options; they are summarised here, and `--help-all` prints the full argparse help,
which imports them. tests/test_cli.py checks that these lists match each command's real parser.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path


@dataclass(frozen=True)
class Option:
    name: str
    type: str
    default: str
    help: str


@dataclass(frozen=True)
class Command:
    """A `humpback` subcommand: its entry point, a one-line summary, the dataclasses of ours it parses
    ("module:Class") and the trainer dataclasses it also accepts (named only)."""

    module: str
    summary: str
    arguments: tuple[str, ...] = ()
    trainer: tuple[str, ...] = ()
    usage: str = "[--config FILE] [--key value ...]"
    epilog: str = ""
    # The options of a command that parses with plain argparse (no recipe): its parser takes their help from here.
    options: tuple[Option, ...] = ()


def _source_path(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"No module {module}")
    return Path(spec.origin)


def _text_of(node: ast.expr) -> str:
    """A help string as written: a literal, or an f-string whose fields show as the names in their braces."""
    if isinstance(node, ast.JoinedStr):
        return "".join(
            str(part.value) if isinstance(part, ast.Constant) else f"{{{ast.unparse(part.value)}}}"
            for part in node.values
        )
    return str(ast.literal_eval(node))


def _help_of(call: ast.Call) -> str:
    for keyword in call.keywords:
        if keyword.arg == "metadata" and isinstance(keyword.value, ast.Dict):
            for key, value in zip(keyword.value.keys, keyword.value.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "help":
                    return _text_of(value)
    return ""


def _default_of(value: ast.expr | None) -> str:
    if value is None:
        return "(required)"
    if isinstance(value, ast.Call) and ast.unparse(value.func) == "field":
        for keyword in value.keywords:
            if keyword.arg == "default":
                return ast.unparse(keyword.value)
            if keyword.arg == "default_factory":
                factory = keyword.value
                body = factory.body if isinstance(factory, ast.Lambda) else None
                return ast.unparse(body) if body is not None else f"{ast.unparse(factory)}()"
        return "(required)"
    return ast.unparse(value)


@cache
def dataclass_options(reference: str) -> tuple[Option, ...]:
    """The fields of the dataclass "module:Class", read from its source without importing it."""
    module, name = reference.split(":")
    tree = ast.parse(_source_path(module).read_text(encoding="utf-8"))
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)
    if node is None:
        raise LookupError(f"{reference}: no class {name} in {module}")
    # A subclass lists its bases' fields first, its own replacing a base's field of the same name in place.
    options: list[Option] = []
    for base in node.bases:
        base_reference = _class_reference(tree, module, ast.unparse(base))
        if base_reference is not None:
            options.extend(dataclass_options(base_reference))
    for statement in node.body:
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            value = statement.value
            help_text = _help_of(value) if isinstance(value, ast.Call) else ""
            option = Option(statement.target.id, ast.unparse(statement.annotation), _default_of(value), help_text)
            names = [item.name for item in options]
            if option.name in names:
                options[names.index(option.name)] = option
            else:
                options.append(option)
    return tuple(options)


def _class_reference(tree: ast.Module, module: str, name: str) -> str | None:
    """The reference (module:Class) of a base class named in `module`: defined or imported there by name, else None."""
    if any(isinstance(n, ast.ClassDef) and n.name == name for n in tree.body):
        return f"{module}:{name}"
    for statement in tree.body:
        if isinstance(statement, ast.ImportFrom) and statement.module:
            if any(alias.name == name and alias.asname is None for alias in statement.names):
                return f"{statement.module}:{name}"
    return None


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
        out.append(
            "  --config FILE            a YAML recipe whose keys are the options below; --key value overrides it"
        )
    for option in command.options:
        out += _option_lines(option)
    for reference in command.arguments:
        out += ["", f"{reference.split(':')[1]} ({reference.split(':')[0]}):"]
        for option in dataclass_options(reference):
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
