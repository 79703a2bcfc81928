import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import json
import random
import sys

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from humpback_trl.corpus import (
    COUNT_KEYS,
    REMOVAL_KEYS,
    STDLIB_MODULES,
    CorpusConfig,
    _python_stdlib,
    prepare_corpus,
    write_corpus,
)
from humpback_trl.segmentation import Segment, split_html, split_markdown, truncate_document

VOCABULARY = """river lantern copper meadow whisper harbor velvet orchard thunder pebble saddle canyon ember glacier
mosaic falcon juniper quarry ribbon sparrow timber violet walnut anchor bramble cobalt dune fern granite hollow ivory
jasmine kettle lagoon marble nectar oyster pepper quill rustic summit tundra umber valley willow yarrow zephyr acorn
basil cedar dahlia easel fjord grove heron inlet jetty kiln ledger""".split()

NO_FILTERS = dict(
    min_chars=None,
    max_chars=None,
    drop_empty_headers=False,
    drop_all_caps_headers=False,
    max_header_capital_ratio=None,
    boilerplate_headers=[],
    max_sentence_similarity=None,
    exact_dedup=False,
    near_dedup_threshold=None,
)


def prose(seed: int, length: int) -> str:
    """Random sentences over a small vocabulary: texts from different seeds share no word 5-gram."""
    rng = random.Random(seed)
    sentences: list[str] = []
    while sum(len(sentence) + 1 for sentence in sentences) < length:
        sentences.append(" ".join(rng.choices(VOCABULARY, k=rng.randint(8, 13))).capitalize() + ".")
    return " ".join(sentences)


def near_copy(text: str) -> str:
    words = text.split(" ")
    words[10], words[150] = "marzipan", "tangerine"
    return " ".join(words)


def expected_counts(**values: int) -> dict[str, int]:
    return dict.fromkeys(COUNT_KEYS, 0) | values


def assert_consistent(counts: dict[str, int]) -> None:
    assert list(counts) == list(COUNT_KEYS)
    assert counts["segments_total"] - sum(counts[key] for key in REMOVAL_KEYS) == counts["segments_kept"]


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def test_split_markdown_nested_headers():
    text = (
        "Intro line before any header.\n\n"
        "# Guide to Bread ##\n\nBread needs flour.\n\n"
        "## Ingredients\n\nFlour and water.\n\n### Optional extras\n\nSeeds.\n\n"
        "## Baking\n\nBake it hot.\n\n```\n# not a header\n```\n\n"
        "##\n\nText under an empty header.\n"
    )
    assert split_markdown(text) == [
        Segment("", "Intro line before any header.", 0),
        Segment(
            "Guide to Bread",
            "Bread needs flour.\n\n## Ingredients\n\nFlour and water.\n\n### Optional extras\n\nSeeds.\n\n"
            "## Baking\n\nBake it hot.\n\n```\n# not a header\n```\n\n##\n\nText under an empty header.",
            1,
        ),
        Segment("Ingredients", "Flour and water.\n\n### Optional extras\n\nSeeds.", 2),
        Segment("Optional extras", "Seeds.", 3),
        Segment("Baking", "Bake it hot.\n\n```\n# not a header\n```", 2),
        Segment("", "Text under an empty header.", 2),
    ]
    assert split_markdown("Just a paragraph.\n#hashtag is not a header.") == [
        Segment("", "Just a paragraph.\n#hashtag is not a header.", 0)
    ]


GARDEN = (
    "Plants need light, water and air; most vegetables want at least six hours of direct sun every day.",
    "Water in the morning, so that the leaves dry before the evening and fungal diseases have less chance to spread.",
    "Collect rain from the roof in a covered barrel.",
    "Reuse it on dry days, when the tap water would cost the most.",
    "Add compost every spring: a few centimetres on top of the beds feed the soil life that feeds the plants.",
)
GARDEN_HTML = f"""<html><head><title>Ignored title</title><style>p {{color: red}}</style></head>
<body><nav><ul><li><a href="/">Home</a></li><li><a href="/shop">Shop all seeds</a></li></ul></nav>
<article><p>A short guide to the basics.</p>
<h1>Garden <em>Basics</em></h1><p>{GARDEN[0]}</p>
<h2>Watering</h2><p>{GARDEN[1]}</p><ul><li>Use a watering can.</li><li>Check the soil first.</li></ul>
<h3>Rain barrels</h3><p>{GARDEN[2]}<br>{GARDEN[3]}</p><script>var x = "<h2>no</h2>";</script>
<h2>Soil &amp; Compost</h2><p>{GARDEN[4]}</p></article>
<aside><p>Subscribe to our newsletter for weekly tips and offers.</p></aside>
<footer><p>Copyright 2024 Garden Shop. All rights reserved.</p></footer>
</body></html>"""


def test_split_html_keeps_headings_and_drops_navigation_aside_and_footer():
    barrels = f"{GARDEN[2]}\n\n{GARDEN[3]}"
    watering = f"{GARDEN[1]}\n\n- Use a watering can.\n- Check the soil first.\n\n### Rain barrels\n\n{barrels}"
    assert split_html(GARDEN_HTML) == [
        Segment("", "A short guide to the basics.", 0),
        Segment("Garden Basics", f"{GARDEN[0]}\n\n## Watering\n\n{watering}\n\n## Soil & Compost\n\n{GARDEN[4]}", 1),
        Segment("Watering", watering, 2),
        Segment("Rain barrels", barrels, 3),
        Segment("Soil & Compost", GARDEN[4], 2),
    ]
    text = " ".join(segment.text for segment in split_html(GARDEN_HTML))
    for boilerplate in ("Shop all seeds", "newsletter", "Copyright", "var x", "Ignored title"):
        assert boilerplate not in text
    assert split_html("<p>No headers here.</p><p>Second paragraph.</p>") == [
        Segment("", "No headers here.\n\nSecond paragraph.", 0)
    ]


def test_headerless_document_is_split_at_paragraphs_within_the_length_range(tmp_path):
    # FineWeb-style plain text: one paragraph per line, 200,000 characters, no header.
    paragraphs = [prose(seed, 450) for seed in range(440)]
    document = "\n".join(paragraphs)[:200_000]
    (tmp_path / "web.jsonl").write_text(json.dumps({"text": document}) + "\n", encoding="utf-8")
    config = CorpusConfig(source=str(tmp_path / "web.jsonl"), near_dedup_threshold=None, max_sentence_similarity=None)
    dataset, counts = prepare_corpus(config, show_progress=False)
    assert counts["paragraph_split_documents"] == 1
    assert counts["segments_kept"] == len(dataset) > 60
    assert all(600 <= len(text) <= 3000 for text in dataset["text"])
    # Cut only between paragraphs: every segment is whole lines of the document.
    lines = set(document.split("\n"))
    assert all(line in lines for text in dataset["text"] for line in text.split("\n"))


def filter_document() -> tuple[str, str]:
    good = prose(1, 1500)
    assert 600 <= len(good) <= 3000 and 600 <= len(near_copy(good)) <= 3000
    sections = [
        ("FREQUENTLY ASKED QUESTIONS", prose(2, 1000)),
        ("ABC Of XYZ Tools", prose(3, 1000)),  # 8 of 13 letters are capitals
        ("Quick Links", prose(4, 1000)),
        ("Comments (3)", prose(5, 1000)),
        ("Short Note", "Too short to keep."),
        ("Long Essay", prose(6, 3200)),
        ("Spammy Section", f"{prose(7, 700)} Visit our shop today. {prose(8, 300)} Visit our shop today."),
        ("Good Section One", good),
        ("Copy Of Good Section", "  ".join(good.upper().split()).replace("  ", "\n", 1)),
        ("Near Copy", near_copy(good)),
        ("Commentary on Style", prose(9, 1200)),
        ("Another Good Section", prose(10, 2000)),
    ]
    body = "".join(f"## {header}\n\n{text}\n\n" for header, text in sections)
    return "Welcome to the garden journal.\n\n##\n\n" + prose(11, 900) + "\n\n" + body, good


def test_each_filter_removes_exactly_its_segments(tmp_path):
    text, good = filter_document()
    (tmp_path / "journal.md").write_text(text, encoding="utf-8")
    dataset, counts = prepare_corpus(CorpusConfig(source=str(tmp_path / "journal.md")), show_progress=False)
    assert counts == expected_counts(
        documents_read=1,
        segments_total=14,
        removed_empty_header=2,
        removed_all_caps_header=1,
        removed_capital_header=1,
        removed_boilerplate_header=2,
        removed_too_short=1,
        removed_too_long=1,
        removed_repeated_sentences=1,
        removed_exact_duplicate=1,
        removed_near_duplicate=1,
        segments_kept=3,
    )
    assert_consistent(counts)
    assert dataset.column_names == ["segment_id", "doc_id", "header", "text"]
    assert dataset["header"] == ["Good Section One", "Commentary on Style", "Another Good Section"]
    assert dataset["segment_id"] == ["journal.md#9", "journal.md#12", "journal.md#13"]
    assert dataset["text"][0] == good


def test_switched_off_filters_keep_everything_and_dedup_order_matters(tmp_path):
    text, _ = filter_document()
    (tmp_path / "journal.md").write_text(text, encoding="utf-8")
    _, counts = prepare_corpus(CorpusConfig(source=str(tmp_path / "journal.md"), **NO_FILTERS), show_progress=False)
    assert counts == expected_counts(documents_read=1, segments_total=14, segments_kept=14)
    # Without exact dedup the upper-cased copy is still caught, now as a near-duplicate (Jaccard 1.0).
    config = CorpusConfig(source=str(tmp_path / "journal.md"), exact_dedup=False)
    _, counts = prepare_corpus(config, show_progress=False)
    assert (counts["removed_exact_duplicate"], counts["removed_near_duplicate"], counts["segments_kept"]) == (0, 2, 3)
    assert_consistent(counts)


def test_jsonl_dedup_and_empty_documents(tmp_path):
    original, different = prose(20, 2000), prose(21, 2000)
    rows = [
        {"text": original},
        {"text": "\n".join(original.upper().split(" "))},
        {"text": near_copy(original)},
        {"text": different},
        {"text": "   \n"},
        {"text": None},
        {"text": ""},
    ]
    write_jsonl(tmp_path / "corpus.jsonl", rows)
    dataset, counts = prepare_corpus(CorpusConfig(source=str(tmp_path / "corpus.jsonl")), show_progress=False)
    assert counts == expected_counts(
        documents_read=7,
        empty_documents=3,
        segments_total=4,
        removed_exact_duplicate=1,
        removed_near_duplicate=1,
        segments_kept=2,
    )
    assert_consistent(counts)
    # Plain-text documents are one headerless segment; the header filters do not apply to them.
    assert dataset.to_list() == [
        {"segment_id": "corpus.jsonl:0#0", "doc_id": "corpus.jsonl:0", "header": "", "text": original},
        {"segment_id": "corpus.jsonl:3#0", "doc_id": "corpus.jsonl:3", "header": "", "text": different},
    ]


def test_missing_text_column_names_column_and_source(tmp_path):
    write_jsonl(tmp_path / "corpus.jsonl", [{"body": "some text", "url": "u"}])
    with pytest.raises(
        ValueError, match=r"column 'text' not found in corpus\.jsonl; available columns: \['body', 'url'\]"
    ):
        prepare_corpus(CorpusConfig(source=str(tmp_path / "corpus.jsonl")), show_progress=False)
    pq.write_table(pa.table({"body": ["some text"]}), tmp_path / "data.parquet")
    with pytest.raises(ValueError, match=r"column 'content' not found in data\.parquet; available columns: \['body'\]"):
        prepare_corpus(CorpusConfig(source=str(tmp_path / "data.parquet"), text_column="content"), show_progress=False)
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        prepare_corpus(CorpusConfig(source=str(tmp_path / "nowhere.jsonl")), show_progress=False)


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    (tmp_path / "clean.md").write_text("## Clean\n\nAll bytes are fine here.\n", encoding="utf-8")
    (tmp_path / "latin.md").write_bytes(b"## Caf\xe9 Notes\n\nThe cr\xe8me is sweet.\n")
    (tmp_path / "rows.jsonl").write_bytes(b'{"text": "A na\xefve plan."}\n{"text": "A valid row."}\n')
    dataset, counts = prepare_corpus(CorpusConfig(source=str(tmp_path), min_chars=None), show_progress=False)
    assert counts == expected_counts(documents_read=4, invalid_utf8_documents=2, segments_total=4, segments_kept=4)
    assert dataset.to_list() == [
        {"segment_id": "clean.md#0", "doc_id": "clean.md", "header": "Clean", "text": "All bytes are fine here."},
        {
            "segment_id": "latin.md#0",
            "doc_id": "latin.md",
            "header": "Caf\ufffd Notes",
            "text": "The cr\ufffdme is sweet.",
        },
        {"segment_id": "rows.jsonl:0#0", "doc_id": "rows.jsonl:0", "header": "", "text": "A na\ufffdve plan."},
        {"segment_id": "rows.jsonl:1#0", "doc_id": "rows.jsonl:1", "header": "", "text": "A valid row."},
    ]


def test_long_documents_are_truncated_at_last_whitespace(tmp_path):
    assert truncate_document("alpha beta gamma", 12) == "alpha beta"
    assert truncate_document("alpha beta gamma", 10) == "alpha beta"  # the word ends exactly at the limit
    assert truncate_document("abcdefghij", 4) == "abcd"  # no whitespace: hard cut
    assert truncate_document("short", 100) == "short"
    write_jsonl(tmp_path / "long.jsonl", [{"text": "alpha beta gamma delta"}, {"text": "tiny"}])
    config = CorpusConfig(source=str(tmp_path / "long.jsonl"), max_document_chars=13, min_chars=None)
    dataset, counts = prepare_corpus(config, show_progress=False)
    assert dataset["text"] == ["alpha beta", "tiny"]
    assert counts == expected_counts(documents_read=2, truncated_documents=1, segments_total=2, segments_kept=2)


TEA_HTML = "<h2>Tea</h2><p>Steep leaves.</p><h3>Green tea</h3><p>Use cooler water.</p>"


def test_directory_of_markdown_html_and_text_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.md").write_text("# Pasta\n\nBoil water.\n\n## Sauce\n\nSimmer tomatoes.\n", encoding="utf-8")
    (tmp_path / "sub" / "b.html").write_text(TEA_HTML, encoding="utf-8")
    (tmp_path / "notes.txt").write_text("Plain notes without headers.\n", encoding="utf-8")
    (tmp_path / "photo.png").write_bytes(b"\x89PNG")
    dataset, counts = prepare_corpus(CorpusConfig(source=str(tmp_path), min_chars=None), show_progress=False)
    assert counts == expected_counts(documents_read=3, segments_total=5, segments_kept=5)
    assert list(zip(dataset["segment_id"], dataset["header"], dataset["text"], strict=True)) == [
        ("a.md#0", "Pasta", "Boil water.\n\n## Sauce\n\nSimmer tomatoes."),
        ("a.md#1", "Sauce", "Simmer tomatoes."),
        ("notes.txt#0", "", "Plain notes without headers."),
        ("sub/b.html#0", "Tea", "Steep leaves.\n\n### Green tea\n\nUse cooler water."),
        ("sub/b.html#1", "Green tea", "Use cooler water."),
    ]


@pytest.mark.parametrize(
    ("doc_format", "headers"), [("html", ["Tea", "Green tea"]), ("auto", ["Tea", "Green tea"]), ("text", [""])]
)
def test_doc_format_of_a_text_column_and_id_column(tmp_path, doc_format, headers):
    (tmp_path / "pages.csv").write_text(f'id,text\npage-7,"{TEA_HTML}"\n', encoding="utf-8")
    config = CorpusConfig(source=str(tmp_path / "pages.csv"), id_column="id", doc_format=doc_format, min_chars=None)
    dataset, _ = prepare_corpus(config, show_progress=False)
    assert dataset["header"] == headers
    assert set(dataset["doc_id"]) == {"page-7"}


def test_write_corpus_outputs(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"text": "First document."}, {"text": "Second document."}])
    dataset, counts = prepare_corpus(
        CorpusConfig(source=str(tmp_path / "in.jsonl"), min_chars=None), show_progress=False
    )
    out = write_corpus(dataset, counts, tmp_path / "out")
    assert datasets.load_from_disk(str(out / "dataset")).to_list() == dataset.to_list()
    lines = (out / "segments.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == dataset.to_list()
    assert json.loads((out / "corpus_counts.json").read_text(encoding="utf-8")) == counts


def test_config_validation():
    with pytest.raises(ValueError, match="doc_format"):
        CorpusConfig(source="x", doc_format="pdf")
    with pytest.raises(ValueError, match="min_chars"):
        CorpusConfig(source="x", min_chars=500, max_chars=100)


def test_hub_dataset_is_read_and_missing_column_is_named(monkeypatch):
    hub = datasets.Dataset.from_dict({"content": ["## Tea\n\nSteep leaves.", "Plain words."], "lang": ["en", "en"]})
    calls = []
    stream = lambda *args, **kwargs: calls.append((args, kwargs)) or hub.to_iterable_dataset()  # noqa: E731
    monkeypatch.setattr(datasets, "load_dataset", stream)
    config = CorpusConfig(source="someone/web-pages", text_column="content", doc_format="markdown", min_chars=None)
    dataset, counts = prepare_corpus(config, show_progress=False)
    assert calls == [(("someone/web-pages", None), {"split": "train", "streaming": True})]
    assert dataset["segment_id"] == ["someone/web-pages:0#0", "someone/web-pages:1#0"]
    assert dataset["header"] == ["Tea", ""]
    assert counts == expected_counts(documents_read=2, segments_total=2, segments_kept=2)
    with pytest.raises(
        ValueError, match=r"'text' not found in someone/web-pages \(split train\).*\['content', 'lang'\]"
    ):
        prepare_corpus(CorpusConfig(source="someone/web-pages"), show_progress=False)


def test_streamed_hub_dataset_is_read_only_up_to_max_documents(monkeypatch):
    served = []

    def documents():
        for index in range(1000):
            served.append(index)
            yield {"text": f"Document {index}.", "id": str(index)}

    monkeypatch.setattr(
        datasets, "load_dataset", lambda *args, **kwargs: datasets.IterableDataset.from_generator(documents)
    )
    config = CorpusConfig(source="someone/web", id_column="id", max_documents=7, min_chars=None, exact_dedup=False)
    dataset, counts = prepare_corpus(config, show_progress=False)
    assert counts["documents_read"] == 7 and dataset["doc_id"] == [str(i) for i in range(7)]
    assert served == list(range(7))


def test_a_split_slice_is_refused_in_favour_of_max_documents():
    with pytest.raises(ValueError, match=r"dataset_split='train\[:600000\]'.*max_documents"):
        CorpusConfig(source="HuggingFaceFW/fineweb-edu", dataset_split="train[:600000]")


def test_corpus_stage_fails_on_zero_segments_naming_the_worst_filter(tmp_path, caplog):
    from humpback_trl.scripts.corpus import run

    (tmp_path / "short.jsonl").write_text(
        "".join(json.dumps({"text": f"Too short {i}."}) + "\n" for i in range(3)), encoding="utf-8"
    )
    with pytest.raises(ValueError, match=r"0 of 3 segments kept .* removed_too_short removed the most \(3\): lower"):
        run(["--source", str(tmp_path / "short.jsonl"), "--output_dir", str(tmp_path / "out")])
    assert "removed_too_short removed 3 of 3 segments" in caplog.text
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": " "}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"0 segments from .*empty.jsonl: 1 documents read, 1 of them empty"):
        run(["--source", str(empty), "--output_dir", str(tmp_path / "out2")])


def test_python_stdlib_is_read_from_source_files_without_importing_them():
    unimported = [name for name in STDLIB_MODULES if name not in sys.modules]
    modules = set(sys.modules)
    documents = list(_python_stdlib())
    assert set(sys.modules) == modules and unimported  # ast reads the files: no module imported, none run
    assert [document.doc_id for document in documents] == [f"python-stdlib:{name}" for name in STDLIB_MODULES]
    assert len(documents) == 59 and documents == list(_python_stdlib())
    bisect = documents[STDLIB_MODULES.index("bisect")]
    assert bisect.doc_format == "markdown" and bisect.text.startswith(
        "# bisect\n\nBisection algorithms.\n\n## bisect.insort_right\n\n"
        "bisect.insort_right(a, x, lo=0, hi=None, *, key=None)\n\n"
        "Insert item x in list a, and keep it sorted assuming a is sorted."
    )


def test_python_stdlib_segments_the_showcase_corpus():
    config = CorpusConfig(source="builtin:python-stdlib", min_chars=300, max_chars=6000, near_dedup_threshold=0.8)
    dataset, counts = prepare_corpus(config, show_progress=False)
    assert counts["documents_read"] == 59 and counts["segments_kept"] == dataset.num_rows >= 300
    assert [i for i in dataset["segment_id"] if i.startswith("python-stdlib:bisect#")] == [
        "python-stdlib:bisect#2",
        "python-stdlib:bisect#4",
    ]
    assert dataset["segment_id"] == prepare_corpus(config, show_progress=False)[0]["segment_id"]
