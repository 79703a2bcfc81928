"""Text filters shared by the corpus step and MAGPIE: exact and near-duplicate detection, repeated sentences,
header capitals and language. Each is a predicate that is True when a text is dropped, so both stages count every
removal under the first filter a text fails."""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import re
from collections.abc import Callable

from datasketch import MinHash, MinHashLSH

from humpback_trl.errors import MissingPackageError

# (count key, predicate that is True when the text is dropped)
Check = tuple[str, Callable[[str], bool]]
# Share of ASCII among the letters of an English text (language="en").
ENGLISH_ASCII_SHARE = 0.9

_WORDS = re.compile(r"\w+")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    """The text split after sentence-ending punctuation and at line breaks."""
    return _SENTENCE_BREAK.split(text)


def capital_ratio(header: str) -> float:
    letters = [char for char in header if char.isalpha()]
    return sum(char.isupper() for char in letters) / len(letters) if letters else 0.0


def has_repeated_sentences(text: str, n: int, threshold: float) -> bool:
    # Sentences shorter than n words have no n-grams to compare and are ignored. Only sentence pairs sharing an
    # n-gram can exceed a threshold >= 0, so an inverted index avoids comparing every pair.
    seen: list[set[tuple[str, ...]]] = []
    index: dict[tuple[str, ...], list[int]] = {}
    for sentence in sentences(text):
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


def _ascii_letter_share(text: str) -> float:
    letters = [char for char in text if char.isalpha()]
    return sum(char.isascii() for char in letters) / len(letters) if letters else 0.0


def wrong_language(language: str) -> Callable[[str], bool]:
    """Whether a text is not in `language`. "en" is a dependency-free heuristic: at least 90% of the letters are
    ASCII, which removes non-Latin scripts and heavily accented text but keeps other Latin-script languages. Other
    codes use langdetect (an optional dependency), seeded so that reruns agree."""
    if language == "en":
        return lambda text: _ascii_letter_share(text) < ENGLISH_ASCII_SHARE
    if importlib.util.find_spec("langdetect") is None:
        raise MissingPackageError(
            f"language={language!r} needs langdetect: pip install langdetect (language='en' uses a built-in heuristic)"
        )
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0

    def wrong(text: str) -> bool:
        try:
            return detect(text) != language
        except LangDetectException:
            return True

    return wrong
