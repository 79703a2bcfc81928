"""First-turn seed extraction from a hand-written oasst1 message export."""

import json
import random

import pytest

from humpback_trl.oasst import first_turn_pairs, load_oasst_seed


def message(mid, parent, role, text, lang="en", rank=None, deleted=False, review=True, tree=None):
    return {
        "message_id": mid,
        "parent_id": parent,
        "message_tree_id": tree or mid,
        "role": role,
        "lang": lang,
        "rank": rank,
        "deleted": deleted,
        "review_result": review,
        "text": text,
    }


EXPORT = [
    # t1: multi-turn tree; only root -> rank-0 reply counts, deeper turns never do.
    message("t1", None, "prompter", "How do tides work?"),
    message("t1-a0", "t1", "assistant", "The Moon's gravity pulls the oceans.", rank=0, tree="t1"),
    message("t1-a1", "t1", "assistant", "Magic.", rank=1, tree="t1"),
    message("t1-q2", "t1-a0", "prompter", "And the Sun?", tree="t1"),
    message("t1-a2", "t1-q2", "assistant", "The Sun adds a smaller pull.", rank=0, tree="t1"),
    # t2: only an unranked and a rank-1 reply -> no pair.
    message("t2", None, "prompter", "Tell me a joke."),
    message("t2-a", "t2", "assistant", "Unranked reply.", rank=None, tree="t2"),
    message("t2-b", "t2", "assistant", "Rank one reply.", rank=1, tree="t2"),
    # t3: German tree -> skipped.
    message("t3", None, "prompter", "Wie spät ist es?", lang="de"),
    message("t3-a", "t3", "assistant", "Es ist spät.", lang="de", rank=0, tree="t3"),
    # t4: deleted rank-0 reply -> no pair.
    message("t4", None, "prompter", "Write a haiku."),
    message("t4-a", "t4", "assistant", "Deleted haiku.", rank=0, deleted=True, tree="t4"),
    # t5: deleted root -> skipped.
    message("t5", None, "prompter", "Deleted question.", deleted=True),
    message("t5-a", "t5", "assistant", "Answer to a deleted question.", rank=0, tree="t5"),
    # orphan reply whose parent is not in the export.
    message("x-a", "missing-parent", "assistant", "Orphan.", rank=0, tree="x"),
    # t0: a second good tree, sorted before t1 by message id.
    message("t0", None, "prompter", "What is 2 + 2?"),
    message("t0-a", "t0", "assistant", "2 + 2 = 4.", rank=0, tree="t0"),
]


def test_first_turn_rank0_english_only():
    pairs, report = first_turn_pairs(EXPORT)
    assert pairs["instruction"] == ["What is 2 + 2?", "How do tides work?"]
    assert pairs["output"] == ["2 + 2 = 4.", "The Moon's gravity pulls the oceans."]
    assert pairs["source_id"] == ["oasst1:t0/t0-a", "oasst1:t1/t1-a0"]
    assert set(pairs["source"]) == {"seed"}
    assert (report.messages, report.roots, report.pairs, report.kept) == (17, 6, 2, 2)
    assert report.skipped == {
        "reply_filtered": 2,  # German t3-a and deleted t4-a
        "reply_not_first_turn": 1,  # t1-a2
        "reply_parent_missing": 1,  # x-a
        "reply_rank_not_0": 3,  # t1-a1, t2-a (unranked), t2-b
        "root_filtered": 2,  # t3 (German), t5 (deleted)
        "root_without_rank0_reply": 2,  # t2, t4
    }


def test_order_is_deterministic_and_limit_applies():
    shuffled = EXPORT[:]
    random.Random(3).shuffle(shuffled)
    pairs, report = first_turn_pairs(shuffled, limit=1)
    assert pairs["source_id"] == ["oasst1:t0/t0-a"] and (report.pairs, report.kept) == (2, 1)


def test_local_export_file(tmp_path):
    path = tmp_path / "oasst_export.jsonl"
    path.write_text("".join(json.dumps(m) + "\n" for m in EXPORT))
    pairs, report = load_oasst_seed(str(path))
    assert len(pairs) == 2 and report.kept == 2


def test_not_an_oasst_export():
    with pytest.raises(KeyError, match="row 0 lacks field"):
        first_turn_pairs([{"message_id": "a", "text": "b"}])
