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

import csv
import hashlib
import io
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, NamedTuple

import datasets
from datasketch import MinHash, MinHashLSH
from tqdm.auto import tqdm

DOC_FORMATS = ("text", "markdown", "html", "auto")
DEFAULT_BOILERPLATE_HEADERS = (
    "advertisement", "advertising", "sponsored", "forum", "quick link", "free newsletter", "newsletter",
    "related post", "related article", "you may also like", "share this", "comment", "leave a reply", "navigation",
    "menu", "subscribe", "cookie policy", "cookie settings", "privacy policy", "terms of use", "sign up", "log in",
    "login", "follow us", "contact us", "sitemap", "recent post", "popular post", "skip to content",
)  # fmt: skip
REMOVAL_KEYS = (
    "removed_empty_header", "removed_all_caps_header", "removed_capital_header", "removed_boilerplate_header",
    "removed_too_short", "removed_too_long", "removed_repeated_sentences", "removed_exact_duplicate",
    "removed_near_duplicate",
)  # fmt: skip
COUNT_KEYS = (
    "documents_read", "empty_documents", "invalid_utf8_documents", "truncated_documents", "segments_total",
    *REMOVAL_KEYS, "segments_kept",
)  # fmt: skip
CORPUS_FEATURES = datasets.Features(
    {name: datasets.Value("string") for name in ("segment_id", "doc_id", "header", "text")}
)

_FILE_FORMATS = {".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html", ".txt": None}
_TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_SUPPORTED_SUFFIXES = (*_FILE_FORMATS, *_TABLE_SUFFIXES)


@dataclass
class CorpusConfig:
    """Input and filters of the corpus step. A filter is switched off with False, None or an empty list."""

    source: str = field(
        metadata={"help": "Local file, directory of files, Hugging Face Hub dataset id, or builtin:python-docs."}
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the documents (tabular inputs)."})
    id_column: str | None = field(default=None, metadata={"help": "Column with document ids; else '<name>:<row>'."})
    doc_format: str = field(
        default="text",
        metadata={"help": "Format of text-column documents and .txt files: text | markdown | html | auto."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Hub dataset split."})
    max_document_chars: int = field(
        default=200_000, metadata={"help": "Longer documents are cut at the last whitespace before this length."}
    )
    min_chars: int | None = field(default=600, metadata={"help": "Drop shorter segments (paper: 600)."})
    max_chars: int | None = field(default=3000, metadata={"help": "Drop longer segments (paper: 3,000)."})
    drop_empty_headers: bool = field(default=True, metadata={"help": "Drop segments of headed docs with no header."})
    drop_all_caps_headers: bool = field(default=True, metadata={"help": "Drop segments with an ALL-CAPS header."})
    max_header_capital_ratio: float | None = field(
        default=0.5, metadata={"help": "Drop segments whose header has a larger share of capital letters."}
    )
    boilerplate_headers: list[str] = field(
        default_factory=lambda: list(DEFAULT_BOILERPLATE_HEADERS),
        metadata={"help": "Drop segments whose header contains one of these phrases (whole words, any case)."},
    )
    max_sentence_similarity: float | None = field(
        default=0.7, metadata={"help": "Drop segments with two sentences whose n-gram Jaccard exceeds this."}
    )
    sentence_ngram: int = field(default=3, metadata={"help": "Word n-gram size for the sentence similarity."})
    exact_dedup: bool = field(default=True, metadata={"help": "Drop repeats of a whitespace/case-normalised text."})
    near_dedup_threshold: float | None = field(
        default=0.8, metadata={"help": "MinHash-LSH Jaccard threshold for near-duplicates."}
    )
    minhash_num_perm: int = field(default=128, metadata={"help": "MinHash permutations."})
    minhash_ngram: int = field(default=5, metadata={"help": "Word n-gram size of the MinHash shingles."})
    minhash_seed: int = field(default=1, metadata={"help": "MinHash seed; fixed so runs are reproducible."})

    def __post_init__(self) -> None:
        if self.doc_format not in DOC_FORMATS:
            raise ValueError(f"doc_format must be one of {DOC_FORMATS}, got {self.doc_format!r}")
        if self.max_document_chars < 1:
            raise ValueError(f"max_document_chars must be positive, got {self.max_document_chars}")
        if self.min_chars is not None and self.max_chars is not None and self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) is larger than max_chars ({self.max_chars})")


@dataclass(frozen=True)
class Segment:
    """Text under a header (sub-headers included). level 0: text under no header (a whole plain-text document)."""

    header: str
    text: str
    level: int


class _Block(NamedTuple):
    level: int  # 1-6 for a header, 0 for body text
    title: str
    line: str  # how the block reads inside an enclosing segment


class _Document(NamedTuple):
    doc_id: str
    text: str
    doc_format: str
    invalid_utf8: bool


def _assemble(blocks: list[_Block], separator: str) -> list[Segment]:
    def body(part: list[_Block]) -> str:
        return separator.join(block.line for block in part).strip()

    starts = [i for i, block in enumerate(blocks) if block.level]
    if not starts:
        text = body(blocks)
        return [Segment("", text, 0)] if text else []
    # Text before the first header is kept as a headerless segment so the empty-header filter counts it.
    segments = [Segment("", preamble, 0)] if (preamble := body(blocks[: starts[0]])) else []
    for k, i in enumerate(starts):
        level = blocks[i].level
        end = next((j for j in starts[k + 1 :] if blocks[j].level <= level), len(blocks))
        if text := body(blocks[i + 1 : end]):
            segments.append(Segment(blocks[i].title, text, level))
    return segments


_ATX_HEADER = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*))?$")
_CLOSING_HASHES = re.compile(r"(?:^|[ \t])#+$")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")


def split_markdown(text: str) -> list[Segment]:
    """One segment per ATX header (`#`..`######`), holding everything up to the next header of the same or a
    higher level; lines inside fenced code blocks are never headers."""
    blocks, fence = [], None
    for line in text.splitlines():
        if fence_match := _FENCE.match(line):
            marker = fence_match.group(1)[0]
            fence = marker if fence is None else (None if marker == fence else fence)
        header = None if fence else _ATX_HEADER.match(line)
        if header:
            title = _CLOSING_HASHES.sub("", (header.group(2) or "").strip())
            blocks.append(_Block(len(header.group(1)), " ".join(title.split()), line))
        else:
            blocks.append(_Block(0, "", line))
    return _assemble(blocks, "\n")


_HEADER_TAGS = {f"h{i}": i for i in range(1, 7)}
_SKIPPED_TAGS = {"script", "style", "noscript", "template", "title"}
_BLOCK_TAGS = {
    "address", "article", "aside", "blockquote", "body", "dd", "div", "dl", "dt", "figcaption", "figure", "footer",
    "form", "header", "hr", "html", "li", "main", "nav", "ol", "p", "pre", "section", "table", "td", "th", "tr", "ul",
}  # fmt: skip


class _HTMLBlocks(HTMLParser):
    """Flattens HTML into header and paragraph blocks; the split into segments is shared with Markdown."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[_Block] = []
        self._parts: list[str] = []
        self._header = 0
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED_TAGS:
            self._skip += 1
        elif self._skip:
            return
        elif tag in _HEADER_TAGS:
            self._flush()
            self._header = _HEADER_TAGS[tag]
        elif tag == "br":
            self._parts.append("\n")
        elif tag in _BLOCK_TAGS:
            self._block_boundary()

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self._skip = max(0, self._skip - 1)
        elif self._skip:
            return
        elif tag in _HEADER_TAGS:
            self._flush()
        elif tag in _BLOCK_TAGS:
            self._block_boundary()

    def handle_data(self, data: str) -> None:
        if not self._skip:
            # Source line breaks are layout, not content; only <br> and block tags break lines.
            self._parts.append(re.sub(r"\s+", " ", data))

    def close(self) -> None:
        super().close()
        self._flush()

    def _block_boundary(self) -> None:
        # Inside a header (<h2><div>A</div>B</h2>, or a header left unclosed) a block only separates words.
        if self._header:
            self._parts.append(" ")
        else:
            self._flush()

    def _flush(self) -> None:
        lines = (" ".join(line.split()) for line in "".join(self._parts).split("\n"))
        text = "\n".join(line for line in lines if line)
        self._parts = []
        if self._header:
            title = " ".join(text.split())
            self.blocks.append(_Block(self._header, title, title))
            self._header = 0
        elif text:
            self.blocks.append(_Block(0, "", text))


def split_html(text: str) -> list[Segment]:
    """One segment per <h1>-<h6>, holding the paragraphs and sub-headers up to the next header of the same or a
    higher level. Script, style, noscript, template and title contents are ignored."""
    parser = _HTMLBlocks()
    parser.feed(text)
    parser.close()
    return _assemble(parser.blocks, "\n\n")


_HTML_HINT = re.compile(r"<(?:html|body|h[1-6]|p|div)\b", re.IGNORECASE)
_MARKDOWN_HINT = re.compile(r"^ {0,3}#{1,6}[ \t]", re.MULTILINE)


def _split(text: str, doc_format: str) -> list[Segment]:
    if doc_format == "auto":
        doc_format = "html" if _HTML_HINT.search(text) else "markdown" if _MARKDOWN_HINT.search(text) else "text"
    if doc_format == "html":
        return split_html(text)
    if doc_format == "markdown":
        return split_markdown(text)
    return [Segment("", stripped, 0)] if (stripped := text.strip()) else []


def truncate_document(text: str, limit: int) -> str:
    """Keep at most `limit` characters, cut at the last whitespace at or before the limit so no word is split;
    a text with no whitespace there is cut at exactly `limit`."""
    if len(text) <= limit:
        return text
    last_space = re.search(r"\s\S*\Z", text[: limit + 1])
    return text[: last_space.start() if last_space and last_space.start() > 0 else limit]


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
    needed = [column for column in (config.text_column, config.id_column) if column is not None]
    for column in needed:
        if column not in available:
            raise ValueError(f"column {column!r} not found in {name}; available columns: {available}")
    return needed


def _row_documents(rows: Iterable[Any], name: str, config: CorpusConfig) -> Iterator[_Document]:
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{name}: row {i} is a {type(row).__name__}, expected an object with named columns")
        _check_columns(row, name, config)
        value = row[config.text_column]
        text, invalid = _repair("" if value is None else str(value))
        doc_id = str(row[config.id_column]) if config.id_column else f"{name}:{i}"
        yield _Document(doc_id, text, config.doc_format, invalid)


def _json_lines(text: str, name: str) -> Iterator[Any]:
    # split("\n"), not splitlines(): U+2028 may legally appear unescaped inside a JSON string.
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{name}, line {number}: invalid JSON ({error})") from error


def _parse_table(text: str, suffix: str, name: str) -> Iterable[Any]:
    if suffix == ".csv":
        # Documents can exceed csv's default 128 KiB field limit.
        csv.field_size_limit(2**31 - 1)
        return csv.DictReader(io.StringIO(text, newline=""))
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return _json_lines(text, name)
        return data if isinstance(data, list) else [data]
    return _json_lines(text, name)


def _parquet_rows(path: Path, name: str, config: CorpusConfig) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    columns = _check_columns(parquet.schema_arrow.names, name, config)
    for batch in parquet.iter_batches(columns=columns):
        yield from batch.to_pylist()


def _file_documents(path: Path, name: str, config: CorpusConfig) -> Iterator[_Document]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _row_documents(_parquet_rows(path, name, config), name, config)
        return
    # surrogateescape keeps invalid bytes visible after parsing, so each affected document can be counted.
    text = path.read_bytes().decode("utf-8-sig", "surrogateescape")
    if suffix in _TABLE_SUFFIXES:
        yield from _row_documents(_parse_table(text, suffix, name), name, config)
    else:
        repaired, invalid = _repair(text)
        yield _Document(name, repaired, _FILE_FORMATS[suffix] or config.doc_format, invalid)


def _hub_documents(config: CorpusConfig) -> Iterator[_Document]:
    dataset = datasets.load_dataset(config.source, config.dataset_config, split=config.dataset_split)
    columns = _check_columns(dataset.column_names, f"{config.source} (split {config.dataset_split})", config)
    yield from _row_documents(dataset.select_columns(columns), config.source, config)


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


def _python_docs() -> Iterator[_Document]:
    """The documentation text that ships with Python itself (the `help()` topics): a corpus with no download."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield _Document(f"python-docs:{name}", _rst_to_markdown(topics[name]), "markdown", False)


def _iter_documents(config: CorpusConfig) -> Iterator[_Document]:
    if config.source == PYTHON_DOCS:
        yield from _python_docs()
        return
    path = Path(config.source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _SUPPORTED_SUFFIXES)
        if not files:
            raise ValueError(f"no {'/'.join(_SUPPORTED_SUFFIXES)} files under {path}")
        for file in files:
            yield from _file_documents(file, file.relative_to(path).as_posix(), config)
    elif path.is_file():
        if path.suffix.lower() not in _SUPPORTED_SUFFIXES:
            raise ValueError(f"unsupported file type {path.suffix!r} for {path}; use one of {_SUPPORTED_SUFFIXES}")
        yield from _file_documents(path, path.name, config)
    elif path.suffix.lower() in _SUPPORTED_SUFFIXES or config.source.startswith(("/", ".", "~")):
        # Looks like a local path: a typo should not turn into a Hub download attempt.
        raise FileNotFoundError(f"corpus file or directory not found: {config.source}")
    else:
        yield from _hub_documents(config)


_WORDS = re.compile(r"\w+")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")
_Check = tuple[str, Callable[[str], bool]]  # (count key, predicate that is True when the segment is dropped)


def _capital_ratio(header: str) -> float:
    letters = [char for char in header if char.isalpha()]
    return sum(char.isupper() for char in letters) / len(letters) if letters else 0.0


def _has_repeated_sentences(text: str, n: int, threshold: float) -> bool:
    # Sentences shorter than n words have no n-grams to compare and are ignored. Only sentence pairs sharing an
    # n-gram can exceed a threshold >= 0, so an inverted index avoids comparing every pair.
    seen: list[set[tuple[str, ...]]] = []
    index: dict[tuple[str, ...], list[int]] = {}
    for sentence in _SENTENCE_BREAK.split(text):
        words = _WORDS.findall(sentence.lower())
        grams = {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}
        if not grams:
            continue
        for other in {j for gram in grams for j in index.get(gram, ())}:
            if len(grams & seen[other]) / len(grams | seen[other]) > threshold:
                return True
        for gram in grams:
            index.setdefault(gram, []).append(len(seen))
        seen.append(grams)
    return False


def exact_duplicate_check() -> Callable[[str], bool]:
    """A predicate that is True for a text seen before (case and whitespace ignored); shared with MAGPIE."""
    seen: set[bytes] = set()

    def is_duplicate(text: str) -> bool:
        key = hashlib.sha1(" ".join(text.lower().split()).encode()).digest()
        if key in seen:
            return True
        seen.add(key)
        return False

    return is_duplicate


def near_duplicate_check(threshold: float, num_perm: int = 128, ngram: int = 5, seed: int = 1) -> Callable[[str], bool]:
    """A predicate that is True for a text whose word n-gram MinHash is within `threshold` Jaccard of a text kept
    before (MinHash-LSH); shared with MAGPIE."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    keys = itertools.count()
    n = ngram
    # Drawing the seeded permutations is costly: each segment starts from a copy of one empty MinHash.
    empty = MinHash(num_perm=num_perm, seed=seed)

    def is_duplicate(text: str) -> bool:
        words = _WORDS.findall(text.lower())
        minhash = empty.copy()
        minhash.update_batch({" ".join(words[i : i + n]).encode() for i in range(max(1, len(words) - n + 1))})
        if lsh.query(minhash):
            return True
        # Dedup runs last, so only segments that survive every filter are indexed: the first kept one wins.
        lsh.insert(str(next(keys)), minhash)
        return False

    return is_duplicate


def _header_checks(config: CorpusConfig) -> list[_Check]:
    checks: list[_Check] = []
    if config.drop_empty_headers:
        checks.append(("removed_empty_header", lambda header: not header.strip()))
    if config.drop_all_caps_headers:
        checks.append(("removed_all_caps_header", str.isupper))
    if (ratio := config.max_header_capital_ratio) is not None:
        checks.append(("removed_capital_header", lambda header: _capital_ratio(header) > ratio))
    if phrases := [phrase.strip() for phrase in config.boilerplate_headers if phrase.strip()]:
        # Whole words with an optional plural: "forum" matches "Forums", "comment" does not match "Commentary".
        pattern = re.compile(rf"\b(?:{'|'.join(map(re.escape, phrases))})s?\b", re.IGNORECASE)
        checks.append(("removed_boilerplate_header", lambda header: bool(pattern.search(header))))
    return checks


def _text_checks(config: CorpusConfig) -> list[_Check]:
    checks: list[_Check] = []
    if (low := config.min_chars) is not None:
        checks.append(("removed_too_short", lambda text: len(text) < low))
    if (high := config.max_chars) is not None:
        checks.append(("removed_too_long", lambda text: len(text) > high))
    if (similarity := config.max_sentence_similarity) is not None:
        n = config.sentence_ngram
        checks.append(("removed_repeated_sentences", lambda text: _has_repeated_sentences(text, n, similarity)))
    if config.exact_dedup:
        checks.append(("removed_exact_duplicate", exact_duplicate_check()))
    if config.near_dedup_threshold is not None:
        near = near_duplicate_check(
            config.near_dedup_threshold, config.minhash_num_perm, config.minhash_ngram, config.minhash_seed
        )
        checks.append(("removed_near_duplicate", near))
    return checks


def _drop_reason(segment: Segment, structured: bool, header_checks: list[_Check], text_checks: list[_Check]) -> str:
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
    documents = tqdm(_iter_documents(config), desc="Preparing corpus", unit="doc", disable=not show_progress)
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
        segments = _split(text, document.doc_format)
        structured = any(segment.level for segment in segments)
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
    """Write `dataset/` (save_to_disk), `segments.jsonl` and `corpus_counts.json` under `output_dir`."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    dataset.save_to_disk(str(output / "dataset"))
    with open(output / "segments.jsonl", "w", encoding="utf-8") as handle:
        for row in dataset:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    (output / "corpus_counts.json").write_text(json.dumps(counts, indent=2) + "\n", encoding="utf-8")
    return output


@dataclass
class CorpusOutputArguments:
    output_dir: str = field(default="outputs/corpus", metadata={"help": "Where the segments and counts are written."})


def make_parser(subparsers=None):
    from trl import TrlParser

    dataclass_types = (CorpusConfig, CorpusOutputArguments)
    if subparsers is not None:
        return subparsers.add_parser("corpus", help="Prepare corpus segments", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types)


def run(argv: list[str] | None = None) -> datasets.Dataset:
    """`humpback corpus --source DOCS --output_dir DIR`: prepare segments for self-augmentation."""
    config, output = make_parser().parse_args_and_config(argv)
    dataset, counts = prepare_corpus(config)
    folder = write_corpus(dataset, counts, output.output_dir)
    print(json.dumps(counts, indent=2))
    print(f"{counts['segments_kept']} segments -> {folder}")
    return dataset


if __name__ == "__main__":
    run()
