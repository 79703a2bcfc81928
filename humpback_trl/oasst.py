"""Seed pairs from the OpenAssistant oasst1 message export, as in Li et al. 2024 (section 4.1).

Only the FIRST turn of each conversation tree is used: the tree's root prompter message and its assistant reply
ranked 0 by the human annotators. (An earlier reproduction walked whole trees, which changes the seed
distribution.) Messages must be English and not deleted; a root that failed review is skipped. Pairs come in the
order of their root message id, so the first `limit` (3,200 by default, the paper's seed size) are deterministic
whatever order the export is read in.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from datasets import Dataset, concatenate_datasets

from humpback_trl.errors import MissingColumnError
from humpback_trl.pairs import PAIR_FEATURES, is_local, load_table, make_pair

logger = logging.getLogger(__name__)

OASST1_HUB_ID = "OpenAssistant/oasst1"
PAPER_SEED_SIZE = 3200
REQUIRED_FIELDS = ("message_id", "parent_id", "role", "lang", "rank", "deleted", "text")


@dataclass(frozen=True)
class SeedReport:
    messages: int
    roots: int
    pairs: int
    kept: int
    skipped: dict[str, int]


def usable(message: Mapping[str, Any], lang: str) -> bool:
    """In `lang`, not deleted and not rejected in review."""
    return message["lang"] == lang and not message["deleted"] and message.get("review_result") is not False


def index_export(messages: Iterable[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], dict[str, Mapping[str, Any]]]:
    """The export's rows and the rows by message id; a row without a required field fails, naming the row."""
    rows = list(messages)
    for index, row in enumerate(rows):
        missing = [name for name in REQUIRED_FIELDS if name not in row]
        if missing:
            raise MissingColumnError(
                f"oasst message row {index} lacks field(s) {missing}; is this the oasst1 message export?"
            )
    return rows, {row["message_id"]: row for row in rows}


def first_turn_pairs(
    messages: Iterable[Mapping[str, Any]], lang: str = "en", limit: int | None = PAPER_SEED_SIZE
) -> tuple[Dataset, SeedReport]:
    rows, by_id = index_export(messages)
    skipped: Counter[str] = Counter()
    best_reply: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        if row["role"] != "assistant" or row["parent_id"] is None:
            continue
        parent = by_id.get(row["parent_id"])
        if parent is None:
            skipped["reply_parent_missing"] += 1
        elif parent["parent_id"] is not None:
            skipped["reply_not_first_turn"] += 1
        elif row["rank"] != 0:
            skipped["reply_rank_not_0"] += 1
        elif not usable(row, lang):
            skipped["reply_filtered"] += 1
        else:
            best_reply[parent["message_id"]] = row
    roots = sorted(
        (row for row in rows if row["parent_id"] is None and row["role"] == "prompter"),
        key=lambda row: row["message_id"],
    )
    pairs = []
    for root in roots:
        if not usable(root, lang):
            skipped["root_filtered"] += 1
        elif root["message_id"] not in best_reply:
            skipped["root_without_rank0_reply"] += 1
        else:
            reply = best_reply[root["message_id"]]
            source_id = f"oasst1:{root['message_id']}/{reply['message_id']}"
            pairs.append(make_pair(root["text"], reply["text"], "seed", source_id))
    kept = pairs[:limit] if limit is not None else pairs
    report = SeedReport(len(rows), len(roots), len(pairs), len(kept), dict(sorted(skipped.items())))
    logger.info("oasst seed: %s", report)
    return Dataset.from_list(kept, features=PAIR_FEATURES), report


def load_oasst_seed(
    name: str = OASST1_HUB_ID, lang: str = "en", limit: int | None = PAPER_SEED_SIZE
) -> tuple[Dataset, SeedReport]:
    """Extract seed pairs from a local export file/folder or a Hub dataset id (its train and validation splits)."""
    if is_local(name):
        table = load_table(name)
    else:
        table = concatenate_datasets([load_table(name, split=split) for split in ("train", "validation")])
    return first_turn_pairs(table, lang=lang, limit=limit)
