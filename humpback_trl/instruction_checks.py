"""Checks on a candidate's instruction, run before any scoring: what a backward model writes when it fails.

A 135M backward model after a few LoRA steps writes `False`, the backward prompt's own words ("the most likely
question or instruction is:") repeated, restatements of its segment, or generic requests ("Provide a more specific
answer."). Model-based scores do not reliably reject these: the rubric preferred such junk on the demo's real
candidates, and likelihood signals reward an instruction that copies its segment (the copied words leak the answer,
so the output becomes more likely). Each check is a plain rule; the first that fails names the pair's `check`
reason, and the pair is kept in the scored pool with that reason, never dropped silently.

- `too_short`: fewer than `min_chars` characters after trimming (empty included);
- `too_long`: longer than `max_share` of its output (and than `long_allowance` characters): a restatement of the
  output, which likelihood signals would reward;
- `loop`: a word trigram occurring `loop_repeats` times or more;
- `prompt_echo`: a word trigram of the backward prompt's own wording ("question or instruction");
- `copied`: `max_copied_share` or more of its word trigrams found in the output (an echo of the segment);
- `unrelated` (not on by default; the backtranslation recipes turn it on): no content word (4+ letters, compared on
  its first 5 letters) in common with the output: a generic or meta request that could follow any text.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from humpback_trl.configs import DEFAULT_BACKWARD_PROMPT, DEFAULT_INSTRUCTION_CHECKS, INSTRUCTION_CHECKS
from humpback_trl.errors import UserError

# `unrelated` is for backtranslation, where the output is a web segment on one topic; a creative request ("Write a
# poem about the sea") shares no word with a good answer, so MAGPIE and seed-like data leave it off (the default).
CHECKS, DEFAULT_CHECKS = INSTRUCTION_CHECKS, DEFAULT_INSTRUCTION_CHECKS
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# Words of four letters or more that say nothing about a topic, so sharing them does not make two texts related.
STOPWORDS = frozenset(
    "about above after again also answer answers been before being below between both cannot could does doing down "
    "during each explain following from further have having here instruction into just know like more most much must "
    "only other over please provide question same should some such tell than that their them then there these they "
    "this those through under until very want were what when where which while whom whose will with would write "
    "your yours".split()
)
STEM = 5
CONTENT_MIN = 4


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def trigrams(tokens: Sequence[str]) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]


def content_stems(tokens: Sequence[str]) -> set[str]:
    return {token[:STEM] for token in tokens if len(token) >= CONTENT_MIN and token not in STOPWORDS}


def prompt_wording(backward_prompt: str) -> str:
    """The backward prompt's own text, without the segment it wraps."""
    return backward_prompt.replace("{output}", " ")


@dataclass(frozen=True)
class InstructionChecks:
    """Which checks run (`enabled`, in `CHECKS` order) and their limits."""

    enabled: tuple[str, ...] = DEFAULT_CHECKS
    min_chars: int = 10
    max_share: float = 0.5
    long_allowance: int = 200
    loop_repeats: int = 3
    max_copied_share: float = 0.5
    backward_prompt: str = DEFAULT_BACKWARD_PROMPT

    def __post_init__(self) -> None:
        unknown = [name for name in self.enabled if name not in CHECKS]
        if unknown:
            raise UserError(f"instruction_checks: {unknown} not among {CHECKS}")
        if self.max_share <= 0 or not 0 < self.max_copied_share <= 1:
            raise UserError(
                f"check_max_share must be > 0 and check_max_copied_share within (0, 1], got {self.max_share} and "
                f"{self.max_copied_share}"
            )
        if "{output}" not in self.backward_prompt:
            raise UserError("backward_prompt must contain the placeholder {output}")
        object.__setattr__(self, "_prompt_trigrams", frozenset(trigrams(words(prompt_wording(self.backward_prompt)))))

    def reason(self, instruction: str, output: str) -> str | None:
        """The first failed check's name, or None when the instruction passes every enabled check."""
        text = instruction.strip()
        tokens = words(text)
        tests = {
            "too_short": lambda: len(text) < self.min_chars,
            "too_long": lambda: len(text) > max(self.max_share * len(output.strip()), self.long_allowance),
            "loop": lambda: bool(tokens) and max(Counter(trigrams(tokens)).values(), default=0) >= self.loop_repeats,
            "prompt_echo": lambda: bool(set(trigrams(tokens)) & self._prompt_trigrams),
            "copied": lambda: self.copied_share(tokens, output) >= self.max_copied_share,
            "unrelated": lambda: not content_stems(tokens) & content_stems(words(output)),
        }
        return next((name for name in CHECKS if name in self.enabled and tests[name]()), None)

    @staticmethod
    def copied_share(tokens: Sequence[str], output: str) -> float:
        """Share of the instruction's word trigrams found in the output (0 with under 3 trigrams: too short to
        tell a copy from a shared term)."""
        grams = trigrams(tokens)
        if len(grams) < 3:
            return 0.0
        found = set(trigrams(words(output)))
        return sum(gram in found for gram in grams) / len(grams)


def check_reasons(checks: InstructionChecks, instructions: Sequence[str], outputs: Sequence[str]) -> list[str | None]:
    return [checks.reason(i, o) for i, o in zip(instructions, outputs, strict=True)]


def check_counts(reasons: Sequence[str | None], checks: InstructionChecks) -> dict[str, int]:
    """Pairs rejected by each enabled check (first failure counted) and `passed`."""
    counts = Counter(reasons)
    return {"passed": counts[None], **{name: counts[name] for name in checks.enabled}}
