"""The (instruction, output) pair schema shared by every stage, and loading pairs from files or the Hub.

A pair carries its provenance (`source`: seed | augmented | magpie, and `source_id`: the document or message it
came from) and the curation fields that self-curation fills in later (empty until then).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from datasets import Dataset, Features, Value, load_dataset, load_from_disk
from datasets.exceptions import DatasetGenerationError
from datasets.utils import logging as datasets_logging

from humpback_trl.errors import MissingColumnError, MissingFileError, UserError, malformed_data_file

logger = logging.getLogger(__name__)

SOURCES = ("seed", "augmented", "magpie")

PAIR_FEATURES = Features(
    {
        "instruction": Value("string"),
        "output": Value("string"),
        "source": Value("string"),
        "source_id": Value("string"),
        # Curation fields, null until a forward model has scored the pair.
        "score": Value("float64"),
        "score_argmax": Value("int32"),
        "score_mass": Value("float64"),
        "reasoning": Value("string"),
        "scorer": Value("string"),
        "iteration": Value("int32"),
    }
)
CURATION_FIELDS = ("score", "score_argmax", "score_mass", "reasoning", "scorer", "iteration")

BUILTIN_PREFIX = "builtin:"
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class PairColumns:
    """Column names in the input data. `source` and `source_id` are optional: when absent, every row gets the
    loader's default source and an id `<data name>:<row index>`."""

    instruction: str = "instruction"
    output: str = "output"
    source: str = "source"
    source_id: str = "source_id"
    # Advice when a column is missing: only `humpback sft` has options that rename the columns it reads.
    settable: bool = False


@dataclass(frozen=True)
class LoadReport:
    name: str
    rows: int
    kept: int
    empty_instruction: int
    empty_output: int

    @property
    def rejected(self) -> int:
        return self.rows - self.kept


def make_pair(instruction: str, output: str, source: str, source_id: str) -> dict[str, object]:
    """A row in the pair schema with the curation fields still empty."""
    return {
        "instruction": instruction,
        "output": output,
        "source": source,
        "source_id": source_id,
        **dict.fromkeys(CURATION_FIELDS),
    }


def is_local(name: str) -> bool:
    return name.startswith(BUILTIN_PREFIX) or Path(name).exists()


def builtin_path(name: str) -> Path:
    """Data bundled with the package, addressed as `builtin:<name>` (e.g. `builtin:seed`)."""
    path = Path(str(resources.files("humpback_trl") / "data" / f"{name}.jsonl"))
    if not path.is_file():
        raise MissingFileError(f"No bundled data set {name!r} (looked for {path})")
    return path


@contextmanager
def datasets_errors_raised() -> Iterator[None]:
    """datasets logs a reader's failure before raising it; the error raised from it names the file and line, so the
    log line would only say it twice."""
    verbosity = datasets_logging.get_verbosity()
    datasets_logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        datasets_logging.set_verbosity(verbosity)


def read_local_file(path: Path) -> Dataset:
    """A local jsonl/json/parquet/csv file; a malformed one is a UserError naming the file and its bad line."""
    if not path.is_file():
        raise MissingFileError(f"Data file {path} does not exist")
    try:
        with datasets_errors_raised():
            return load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path), split="train")
    except DatasetGenerationError as error:
        raise malformed_data_file(path, error) from error


def load_table(name: str, split: str = "train", config_name: str | None = None) -> Dataset:
    """A local file (jsonl/json/parquet/csv), a `save_to_disk` folder, bundled data or a Hub dataset id."""
    if name.startswith(BUILTIN_PREFIX):
        name = str(builtin_path(name[len(BUILTIN_PREFIX) :]))
    path = Path(name)
    if path.is_dir():
        loaded = load_from_disk(str(path))
        return loaded[split] if hasattr(loaded, "keys") else loaded
    if path.suffix in LOCAL_FORMATS:
        return read_local_file(path)
    if name.startswith((".", "/", "~")):
        raise MissingFileError(f"Data path {name} does not exist")
    return load_dataset(name, name=config_name, split=split)


def _is_blank(text: object) -> bool:
    return not isinstance(text, str) or not text.strip()


def to_pairs(table: Dataset, name: str, columns: PairColumns = PairColumns(), default_source: str = "seed") -> Dataset:
    """Map any table onto the pair schema; a missing column is an error naming the column and the data."""
    for role, column in (("instruction", columns.instruction), ("output", columns.output)):
        if column not in table.column_names:
            raise MissingColumnError(
                f"{name}: no {role} column {column!r}; its columns are {table.column_names}. "
                + (
                    f"Set `{role}_column` to the right name."
                    if columns.settable
                    else f"Pair files need the column {column!r}: rename it in the file (only `humpback sft` reads "
                    f"other names, through `{role}_column`)."
                )
            )
    if default_source not in SOURCES:
        raise UserError(f"default source {default_source!r} is not one of {SOURCES}")
    has_source = columns.source in table.column_names
    # Files in the pair schema (candidates, A5) keep their own ids whatever id column the seed data uses.
    id_column = next((c for c in (columns.source_id, "source_id") if c in table.column_names), None)

    def convert(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        n = len(indices)
        sources = batch[columns.source] if has_source else [default_source] * n
        for index, source in zip(indices, sources, strict=True):
            if source not in SOURCES:
                raise UserError(f"{name}, row {index}: source {source!r} is not one of {SOURCES}")
        out = {
            "instruction": batch[columns.instruction],
            "output": batch[columns.output],
            "source": sources,
            "source_id": [str(v) for v in batch[id_column]] if id_column else [f"{name}:{i}" for i in indices],
        }
        for field in CURATION_FIELDS:
            out[field] = batch[field] if field in batch else [None] * n
        return out

    return table.map(
        convert,
        batched=True,
        with_indices=True,
        remove_columns=table.column_names,
        features=PAIR_FEATURES,
        desc=f"Reading pairs from {name}",
    )


def drop_blank(pairs: Dataset, name: str) -> tuple[Dataset, LoadReport]:
    """Reject pairs whose instruction or output is empty or whitespace, counting and logging them."""
    blank_instruction = [_is_blank(text) for text in pairs["instruction"]]
    blank_output = [_is_blank(text) for text in pairs["output"]]
    keep = [i for i, (a, b) in enumerate(zip(blank_instruction, blank_output, strict=True)) if not (a or b)]
    report = LoadReport(name, len(pairs), len(keep), sum(blank_instruction), sum(blank_output))
    if report.rejected:
        kept = set(keep)
        rejected_ids = [sid for i, sid in enumerate(pairs["source_id"]) if i not in kept][:5]
        logger.warning(
            "%s: rejected %d of %d pairs with an empty instruction (%d) or output (%d), e.g. %s",
            name,
            report.rejected,
            report.rows,
            report.empty_instruction,
            report.empty_output,
            rejected_ids,
        )
    return (pairs.select(keep) if report.rejected else pairs), report


def load_pairs(
    name: str,
    columns: PairColumns = PairColumns(),
    default_source: str = "seed",
    split: str = "train",
    config_name: str | None = None,
) -> tuple[Dataset, LoadReport]:
    if is_local(name) and Path(name).is_file() and Path(name).stat().st_size == 0:
        # An empty subset (A5 of a weak scorer) is a legitimate input, not a broken file.
        logger.warning("%s is empty: it adds no pairs", name)
        return Dataset.from_dict({column: [] for column in PAIR_FEATURES}, features=PAIR_FEATURES), LoadReport(
            name, 0, 0, 0, 0
        )
    table = load_table(name, split=split, config_name=config_name)
    return drop_blank(to_pairs(table, name, columns, default_source), name)
