"""Splitting documents into segments: the text under a header together with its sub-headers (Li et al. 2024,
appendix: a ClueWeb segment is the text under an HTML header). Markdown and HTML documents are split at their
headers; a plain-text document is one headerless segment."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import NamedTuple

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


def split(text: str, doc_format: str) -> list[Segment]:
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
