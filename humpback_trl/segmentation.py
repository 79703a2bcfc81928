"""Splitting documents into segments: the text under a header together with its sub-headers (Li et al. 2024,
appendix: a ClueWeb segment is the text under an HTML header). Markdown and HTML documents are split at their
headers (HTML after trafilatura's main-content extraction to Markdown); a document without headers is split at
paragraph boundaries (`split_paragraphs` states the rule)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

import trafilatura

DOC_FORMATS = ("text", "markdown", "html", "auto")


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
# *text*, **text**, _text_ inside a header are markup (trafilatura writes <em> so), not part of the title.
_EMPHASIS = re.compile(r"(\*{1,3}|_{1,3})(\S(?:.*?\S)?)\1")


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
            title = _EMPHASIS.sub(r"\2", _CLOSING_HASHES.sub("", (header.group(2) or "").strip()))
            blocks.append(_Block(len(header.group(1)), " ".join(title.split()), line))
        else:
            blocks.append(_Block(0, "", line))
    return _assemble(blocks, "\n")


def split_html(text: str) -> list[Segment]:
    """trafilatura extracts the main content as Markdown with its headings (navigation, footers, asides, comments
    and other boilerplate removed); the Markdown splitter then cuts it at the headings. favor_recall keeps the
    headings of short pages, which trafilatura's default precision mode flattens into plain lines."""
    markdown = trafilatura.extract(text, output_format="markdown", include_formatting=True, favor_recall=True)
    return split_markdown(markdown or "")


_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def split_paragraphs(text: str, max_chars: int | None) -> list[Segment]:
    """A headerless document as segments of at most `max_chars`, cut only at paragraph boundaries.

    Rule: a document of at most `max_chars` is one segment. A longer one is cut into paragraphs (at blank lines, or
    at line breaks when it has no blank line, as in FineWeb's plain text), which are packed in order: a segment is
    closed when the next paragraph would take it past `max_chars`. A single paragraph longer than `max_chars` stays
    one segment (the length filter drops it); segments shorter than `min_chars` are dropped by the length filter too.
    """
    text = text.strip()
    if not text:
        return []
    if max_chars is None or len(text) <= max_chars:
        return [Segment("", text, 0)]
    separator = "\n\n" if _BLANK_LINE.search(text) else "\n"
    pattern = _BLANK_LINE if separator == "\n\n" else re.compile(r"\n")
    segments: list[str] = []
    current = ""
    for paragraph in (part.strip() for part in pattern.split(text)):
        if not paragraph:
            continue
        if current and len(current) + len(separator) + len(paragraph) > max_chars:
            segments.append(current)
            current = ""
        current = f"{current}{separator}{paragraph}" if current else paragraph
    segments.append(current)
    return [Segment("", segment, 0) for segment in segments]


_HTML_HINT = re.compile(r"<(?:html|body|h[1-6]|p|div)\b", re.IGNORECASE)
_MARKDOWN_HINT = re.compile(r"^ {0,3}#{1,6}[ \t]", re.MULTILINE)


def split(text: str, doc_format: str, max_chars: int | None = None) -> list[Segment]:
    """Segments of a document: at its headers (Markdown, HTML), or at paragraph boundaries (plain text and
    documents without a header) within `max_chars`."""
    if doc_format == "auto":
        doc_format = "html" if _HTML_HINT.search(text) else "markdown" if _MARKDOWN_HINT.search(text) else "text"
    segments = split_html(text) if doc_format == "html" else split_markdown(text) if doc_format == "markdown" else []
    if any(segment.level for segment in segments):
        return segments
    return split_paragraphs("\n\n".join(segment.text for segment in segments) if segments else text, max_chars)


def truncate_document(text: str, limit: int) -> str:
    """Keep at most `limit` characters, cut at the last whitespace at or before the limit so no word is split;
    a text with no whitespace there is cut at exactly `limit`."""
    if len(text) <= limit:
        return text
    last_space = re.search(r"\s\S*\Z", text[: limit + 1])
    return text[: last_space.start() if last_space and last_space.start() > 0 else limit]
