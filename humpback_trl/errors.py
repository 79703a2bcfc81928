"""The errors this package raises for its users on purpose, and the one-line report of a malformed data file.

`humpback` prints a `UserError` as one line and exits 2 (cli.py); any other exception is a bug and keeps its
traceback. Raise `UserError` where the user can fix the cause: a recipe key or value, a path, a column, a data file.
"""

from __future__ import annotations

import json
from pathlib import Path


class UserError(ValueError):
    """Something the user can fix, named in the message (the option, file, row or key). A ValueError, so code that
    catches ValueError around a check keeps working."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class MissingColumnError(UserError, KeyError):
    """Data the user named lacks a column the stage reads."""


class MissingPackageError(UserError, ModuleNotFoundError):
    """An optional package the user asked for (through a model name or an option) is not installed."""


def first_bad_json_line(path: Path) -> tuple[int, int, str] | None:
    """Line, column (from 1) and reason where a JSON file stops parsing, read as one document or, as datasets also
    reads .json files, as JSON lines; None when it parses."""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        json.loads(text)
        return None
    except json.JSONDecodeError as error:
        # "Extra data" after a first complete value: the file is JSON lines, read line by line below.
        if path.suffix == ".json" and error.msg != "Extra data":
            return error.lineno, error.colno, error.msg
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError as error:
            return number, error.colno, error.msg
    return None


def malformed_data_file(path: str | Path, error: BaseException) -> UserError:
    """One line naming the file and, for JSON, the line that does not parse; otherwise the first line of the
    reader's own message (pandas names the CSV row, Arrow the Parquet problem)."""
    path = Path(path)
    if path.suffix in (".jsonl", ".json"):
        bad = first_bad_json_line(path)
        if bad is not None:
            line, column, reason = bad
            return UserError(f"{path}: line {line}, column {column}: not valid JSON ({reason})")
    # datasets wraps the reader's exception; its cause holds the message that names the problem.
    cause = error.__cause__ or error.__context__ or error
    reason = next((line.strip() for line in str(cause).splitlines() if line.strip()), type(cause).__name__)
    return UserError(f"{path}: not a readable {path.suffix.lstrip('.') or 'data'} file ({reason})")
