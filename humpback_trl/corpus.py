"""Unlabeled corpus preparation: raw documents -> self-contained web segments for self-augmentation.

Humpback's unlabeled data are ClueWeb segments: the text under an HTML header together with its sub-headers
(Li et al. 2024, "Self-Alignment with Instruction Backtranslation", ICLR 2024, appendix). The defaults follow the
paper's preprocessing:

* length: segments of 600-3,000 characters (the range reported in the appendix);
* deduplication: exact (normalised text hash) and near-duplicate (MinHash-LSH, word 5-grams);
* headers: empty, ALL-CAPS, a large share of capital letters, navigation/boilerplate text such as
  "advertisement", "forum", "quick link", "free newsletter";
* repeated sentences inside a segment, found by n-gram Jaccard similarity between its sentences.

The paper names these heuristics without values beyond the length range; the thresholds (capital share 0.5,
sentence similarity 0.7 on word 3-grams, MinHash Jaccard 0.8 on word 5-grams) are this package's choices.

Every filter can be switched off and every removal is counted in pipeline order, so
``segments_total - sum(removed_*) == segments_kept`` always holds.
"""

from __future__ import annotations

import ast
import codecs
import itertools
import json
import logging
import re
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import pyarrow as pa
from tqdm.auto import tqdm

from humpback_trl.configs import CorpusConfig
from humpback_trl.errors import MissingColumnError, MissingFileError, UserError, malformed_data_file
from humpback_trl.filters import (
    Check,
    capital_ratio,
    exact_duplicate_check,
    has_repeated_sentences,
    near_duplicate_check,
)
from humpback_trl.pairs import datasets_errors_raised
from humpback_trl.segmentation import Segment, split, truncate_document
from humpback_trl.stage_outputs import CORPUS

logger = logging.getLogger(__name__)

REMOVAL_KEYS = (
    "removed_empty_header", "removed_all_caps_header", "removed_capital_header", "removed_boilerplate_header",
    "removed_too_short", "removed_too_long", "removed_repeated_sentences", "removed_exact_duplicate",
    "removed_near_duplicate",
)  # fmt: skip
COUNT_KEYS = (
    "documents_read", "empty_documents", "invalid_utf8_documents", "truncated_documents",
    "paragraph_split_documents", "segments_total", *REMOVAL_KEYS, "segments_kept",
)  # fmt: skip
# Advice printed with the filter that removed the most segments when none is kept.
REMOVAL_ADVICE = {
    "removed_too_short": "lower min_chars",
    "removed_too_long": "raise max_chars",
    "removed_empty_header": "set drop_empty_headers: false",
    "removed_all_caps_header": "set drop_all_caps_headers: false",
    "removed_capital_header": "raise max_header_capital_ratio",
    "removed_boilerplate_header": "shorten boilerplate_headers",
    "removed_repeated_sentences": "raise max_sentence_similarity",
    "removed_exact_duplicate": "set exact_dedup: false",
    "removed_near_duplicate": "raise near_dedup_threshold",
}
CORPUS_FEATURES = datasets.Features(
    {name: datasets.Value("string") for name in ("segment_id", "doc_id", "header", "text")}
)

_FILE_FORMATS = {".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html", ".txt": None}
_SUPPORTED_SUFFIXES = (*_FILE_FORMATS, ".jsonl", ".json", ".csv", ".parquet")


class Document(NamedTuple):
    doc_id: str
    text: str
    doc_format: str
    invalid_utf8: bool


_SURROGATES = re.compile("[\ud800-\udfff]")


def _repair(text: str) -> tuple[str, bool]:
    """Replace the bytes that surrogateescape kept from an invalid UTF-8 file, as errors="replace" would."""
    if not _SURROGATES.search(text):
        return text, False
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), True
    except UnicodeEncodeError:  # lone surrogates written as JSON escapes, not raw bytes
        return _SURROGATES.sub("\ufffd", text), True


def _check_columns(available: Iterable[str], name: str, config: CorpusConfig) -> list[str]:
    """Return the columns the corpus reads; raise if one is missing from `available`."""
    available = list(available)
    options = {"text_column": config.text_column, "id_column": config.id_column}
    for option, column in options.items():
        if column is not None and column not in available:
            raise MissingColumnError(
                f"column {column!r} not found in {name}; available columns: {available} (set {option})"
            )
    return [column for column in options.values() if column is not None]


def _row_documents(rows: Iterable[Any], name: str, config: CorpusConfig, bad_bytes: bool = False) -> Iterator[Document]:
    """One document per row. `bad_bytes`: the file held invalid UTF-8, which its loader replaced with U+FFFD, so a
    row with U+FFFD counts as an invalid-UTF-8 document."""
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise UserError(f"{name}: row {i} is a {type(row).__name__}, expected an object with named columns")
        _check_columns(row, name, config)
        value = row[config.text_column]
        text, invalid = _repair("" if value is None else str(value))
        invalid = invalid or (bad_bytes and "\ufffd" in text)
        doc_id = str(row[config.id_column]) if config.id_column else f"{name}:{i}"
        yield Document(doc_id, text, config.doc_format, invalid)


# datasets' packaged loaders read the table formats: JSON lines or a JSON array of objects, CSV, Parquet.
_LOADERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def _is_utf8(path: Path) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _table_rows(path: Path, name: str, config: CorpusConfig) -> Iterator[dict[str, Any]]:
    """Rows of a local table file, streamed by its datasets loader; a malformed file is one UserError naming the
    file and, for JSON, the line that does not parse."""
    loader = _LOADERS[path.suffix.lower()]
    options = {} if loader == "parquet" else {"encoding": "utf-8-sig", "encoding_errors": "replace"}
    try:
        with datasets_errors_raised():
            # Parquet's schema is read here, so a corrupt Parquet file fails before the first row.
            dataset = datasets.load_dataset(loader, data_files=str(path), split="train", streaming=True, **options)
            if dataset.column_names is not None:  # unknown for JSON until read: _row_documents checks each row
                dataset = dataset.select_columns(_check_columns(dataset.column_names, name, config))
            yield from dataset
    except UserError:
        raise
    # ValueError covers pandas' ParserError (CSV); ArrowInvalid, JSON and Parquet.
    except (pa.ArrowInvalid, datasets.exceptions.DatasetGenerationError, ValueError) as error:
        raise malformed_data_file(path, error) from error


def _file_documents(path: Path, name: str, config: CorpusConfig) -> Iterator[Document]:
    suffix = path.suffix.lower()
    if suffix in _LOADERS:
        bad_bytes = suffix != ".parquet" and not _is_utf8(path)
        yield from _row_documents(_table_rows(path, name, config), name, config, bad_bytes)
        return
    # surrogateescape keeps invalid bytes visible after decoding, so the document can be counted.
    text = path.read_bytes().decode("utf-8-sig", "surrogateescape")
    repaired, invalid = _repair(text)
    yield Document(name, repaired, _FILE_FORMATS[suffix] or config.doc_format, invalid)


def _hub_documents(config: CorpusConfig) -> Iterator[Document]:
    # Streamed: documents arrive as they are read, and prepare_corpus stops reading after max_documents.
    dataset = datasets.load_dataset(config.source, config.dataset_config, split=config.dataset_split, streaming=True)
    if dataset.column_names is not None:  # unknown for some streamed formats: _row_documents checks each row
        columns = _check_columns(dataset.column_names, f"{config.source} (split {config.dataset_split})", config)
        dataset = dataset.select_columns(columns)
    yield from _row_documents(dataset, config.source, config)


PYTHON_DOCS = "builtin:python-docs"
_RST_UNDERLINES = {"*": 1, "=": 2, "-": 3}


def _rst_to_markdown(text: str) -> str:
    """Python's help topics mark headers with RST underlines; turn them into Markdown headers for splitting."""
    lines, out = text.split("\n"), []
    for i, line in enumerate(lines):
        below = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and len(below) == len(line) and len(set(below)) == 1 and below[0] in _RST_UNDERLINES:
            out.append("#" * _RST_UNDERLINES[below[0]] + " " + line)
        elif not (out and out[-1].startswith("#") and line and len(set(line)) == 1 and line[0] in _RST_UNDERLINES):
            out.append(line)
    return "\n".join(out)


def _python_docs() -> Iterator[Document]:
    """The documentation text that ships with Python itself (the `help()` topics): a corpus with no download."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield Document(f"python-docs:{name}", _rst_to_markdown(topics[name]), "markdown", False)


PYTHON_STDLIB = "builtin:python-stdlib"
# Pure-Python standard library modules with documented public APIs, present on every Python from 3.10 on; a fixed,
# sorted list, so the corpus is the same on every machine with the same Python.
STDLIB_MODULES = (
    "argparse", "base64", "bisect", "calendar", "collections", "configparser", "contextlib", "copy", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "enum", "fractions", "ftplib", "functools", "gettext", "glob",
    "heapq", "hmac", "imaplib", "inspect", "ipaddress", "json", "locale", "logging", "mailbox", "mimetypes",
    "numbers", "optparse", "pickle", "pprint", "queue", "random", "re", "sched", "secrets", "selectors", "shlex",
    "shutil", "smtplib", "socketserver", "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap",
    "threading", "timeit", "tokenize", "trace", "traceback", "typing", "uuid", "warnings", "weakref", "zipfile",
)  # fmt: skip


def _module_source(name: str) -> Path:
    """A standard library module's source file (a package's __init__.py), found without importing the module."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    module = stdlib / f"{name}.py"
    return module if module.is_file() else stdlib / name / "__init__.py"


def _docstring_sections(nodes: list[ast.stmt], prefix: str, level: int) -> Iterator[str]:
    """A Markdown section per public, documented class and function among `nodes`, a class's methods under it. A
    function's section opens with its signature: a segment's text leaves its header out, and it names the function."""
    for node in nodes:
        if not isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) or node.name.startswith("_"):
            continue
        if doc := ast.get_docstring(node):
            signature = "" if isinstance(node, ast.ClassDef) else f"{prefix}{node.name}({ast.unparse(node.args)})\n\n"
            yield f"{'#' * level} {prefix}{node.name}\n\n{signature}{doc}"
        if isinstance(node, ast.ClassDef) and level < 6:
            yield from _docstring_sections(node.body, f"{prefix}{node.name}.", level + 1)


def _python_stdlib() -> Iterator[Document]:
    """The standard library's own docstrings, read from its source files with `ast` (nothing is imported or run):
    per module a Markdown document of its docstring and its public classes, methods and functions, one header each."""
    for name in STDLIB_MODULES:
        tree = ast.parse(_module_source(name).read_bytes())
        sections = [f"# {name}\n\n{ast.get_docstring(tree) or ''}", *_docstring_sections(tree.body, f"{name}.", 2)]
        yield Document(f"python-stdlib:{name}", "\n\n".join(sections), "markdown", False)


BUILTIN_CORPORA = {PYTHON_DOCS: _python_docs, PYTHON_STDLIB: _python_stdlib}


def _iter_documents(config: CorpusConfig) -> Iterator[Document]:
    if config.source in BUILTIN_CORPORA:
        yield from BUILTIN_CORPORA[config.source]()
        return
    path = Path(config.source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _SUPPORTED_SUFFIXES)
        if not files:
            raise UserError(f"no {'/'.join(_SUPPORTED_SUFFIXES)} files under {path}")
        for file in files:
            yield from _file_documents(file, file.relative_to(path).as_posix(), config)
    elif path.is_file():
        if path.suffix.lower() not in _SUPPORTED_SUFFIXES:
            raise UserError(f"unsupported file type {path.suffix!r} for {path}; use one of {_SUPPORTED_SUFFIXES}")
        yield from _file_documents(path, path.name, config)
    elif path.suffix.lower() in _SUPPORTED_SUFFIXES or config.source.startswith(("/", ".", "~")):
        # Looks like a local path: a typo should not turn into a Hub download attempt.
        raise MissingFileError(f"corpus file or directory not found: {config.source}")
    else:
        yield from _hub_documents(config)


def _header_checks(config: CorpusConfig) -> list[Check]:
    checks: list[Check] = []
    if config.drop_empty_headers:
        checks.append(("removed_empty_header", lambda header: not header.strip()))
    if config.drop_all_caps_headers:
        checks.append(("removed_all_caps_header", str.isupper))
    if (ratio := config.max_header_capital_ratio) is not None:
        checks.append(("removed_capital_header", lambda header: capital_ratio(header) > ratio))
    if phrases := [phrase.strip() for phrase in config.boilerplate_headers if phrase.strip()]:
        # Whole words with an optional plural: "forum" matches "Forums", "comment" does not match "Commentary".
        pattern = re.compile(rf"\b(?:{'|'.join(map(re.escape, phrases))})s?\b", re.IGNORECASE)
        checks.append(("removed_boilerplate_header", lambda header: bool(pattern.search(header))))
    return checks


def _text_checks(config: CorpusConfig) -> list[Check]:
    checks: list[Check] = []
    if (low := config.min_chars) is not None:
        checks.append(("removed_too_short", lambda text: len(text) < low))
    if (high := config.max_chars) is not None:
        checks.append(("removed_too_long", lambda text: len(text) > high))
    if (similarity := config.max_sentence_similarity) is not None:
        n = config.sentence_ngram
        checks.append(("removed_repeated_sentences", lambda text: has_repeated_sentences(text, n, similarity)))
    if config.exact_dedup:
        checks.append(("removed_exact_duplicate", exact_duplicate_check()))
    if config.near_dedup_threshold is not None:
        near = near_duplicate_check(
            config.near_dedup_threshold, config.minhash_num_perm, config.minhash_ngram, config.minhash_seed
        )
        checks.append(("removed_near_duplicate", near))
    return checks


def _drop_reason(segment: Segment, structured: bool, header_checks: list[Check], text_checks: list[Check]) -> str:
    # The paper's header heuristics only make sense for documents that have headers; a plain-text document is
    # one headerless segment and skips them.
    if structured:
        for key, drop in header_checks:
            if drop(segment.header):
                return key
    # Checks run in order and stop at the first hit, so stateful dedup only sees segments that passed the rest.
    return next((key for key, drop in text_checks if drop(segment.text)), "")


def prepare_corpus(config: CorpusConfig, show_progress: bool = True) -> tuple[datasets.Dataset, dict[str, int]]:
    """Read, split and filter the documents named by `config`. Returns the kept segments (segment_id, doc_id,
    header, text) and the counts (keys in COUNT_KEYS order). segment_id is `<doc_id>#<index>` with the index taken
    before filtering, so ids do not change when filters are switched."""
    counts = dict.fromkeys(COUNT_KEYS, 0)
    header_checks, text_checks = _header_checks(config), _text_checks(config)
    rows: dict[str, list[str]] = {name: [] for name in CORPUS_FEATURES}
    documents = tqdm(
        itertools.islice(_iter_documents(config), config.max_documents),
        desc="Preparing corpus",
        unit="doc",
        total=config.max_documents,
        disable=not show_progress,
    )
    for document in documents:
        counts["documents_read"] += 1
        counts["invalid_utf8_documents"] += document.invalid_utf8
        if not document.text.strip():
            counts["empty_documents"] += 1
            continue
        text = document.text
        if len(text) > config.max_document_chars:
            text = truncate_document(text, config.max_document_chars)
            counts["truncated_documents"] += 1
        segments = split(text, document.doc_format, config.max_chars)
        structured = any(segment.level for segment in segments)
        counts["paragraph_split_documents"] += not structured and len(segments) > 1
        for index, segment in enumerate(segments):
            counts["segments_total"] += 1
            if reason := _drop_reason(segment, structured, header_checks, text_checks):
                counts[reason] += 1
                continue
            rows["segment_id"].append(f"{document.doc_id}#{index}")
            rows["doc_id"].append(document.doc_id)
            rows["header"].append(segment.header)
            rows["text"].append(segment.text)
    counts["segments_kept"] = len(rows["text"])
    return datasets.Dataset.from_dict(rows, features=CORPUS_FEATURES), counts


def write_corpus(dataset: datasets.Dataset, counts: dict[str, int], output_dir: str | Path) -> Path:
    """Write the segments (save_to_disk folder and JSON lines) and the filters' counts under `output_dir`, under the
    names the corpus stage declares (stage_outputs.CORPUS)."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    dataset.save_to_disk(str(output / CORPUS.dataset))
    with open(output / CORPUS.segments, "w", encoding="utf-8") as handle:
        for row in dataset:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    (output / CORPUS.report).write_text(json.dumps(counts, indent=2) + "\n", encoding="utf-8")
    return output


def check_counts(counts: dict[str, int], source: str) -> None:
    """Warn about a filter that removed more than half of the segments; fail when no segment is kept, naming the
    filter that removed the most (an empty corpus would only fail later, inside augmentation)."""
    total = counts["segments_total"]
    removed = {key: counts[key] for key in REMOVAL_KEYS if counts[key]}
    for key, number in removed.items():
        if number > total / 2:
            logger.warning("corpus: %s removed %d of %d segments (%s?)", key, number, total, REMOVAL_ADVICE[key])
    if counts["segments_kept"]:
        return
    if not total:
        raise UserError(
            f"corpus: 0 segments from {source}: {counts['documents_read']} documents read, "
            f"{counts['empty_documents']} of them empty."
        )
    worst = max(removed, key=removed.__getitem__)
    raise UserError(
        f"corpus: 0 of {total} segments kept from {source}; {worst} removed the most ({removed[worst]}): "
        f"{REMOVAL_ADVICE[worst]}. All counts: {counts}"
    )
