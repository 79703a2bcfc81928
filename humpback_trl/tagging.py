"""The paper's source tags (Li et al. 2024, section 2.3 and Table 8).

Seed examples get S_a appended to their instruction and augmented ones S_w, so the model can tell the two
distributions apart; at inference both tags together gave the best win rate (66.47 vs 62.70 without tags, 7B).
Training (the forward collator) and inference (`humpback chat`, through the collator saved with the adapter) call
the same `Tagging.apply`, so the text the model sees can never drift between the two. The curation rubric is a
judging prompt, not an instruction to answer, so it carries no tag unless `scoring` is given a `Tagging`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

SEED_TAG = "Answer in the style of an AI Assistant."
WEB_TAG = "Answer with knowledge from web search."

# MAGPIE responses come from an aligned chat model, so they are assistant-style like the seed.
DEFAULT_TAGS: dict[str, str] = {"seed": SEED_TAG, "augmented": WEB_TAG, "magpie": SEED_TAG}

SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Tagging:
    enabled: bool = True
    tags: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TAGS))

    def apply(self, instruction: str, sources: str | Sequence[str]) -> str:
        """Append the tag(s) of `sources` (one source at training time, any number at inference)."""
        if not self.enabled:
            return instruction
        names = [sources] if isinstance(sources, str) else list(sources)
        unknown = [name for name in names if name not in self.tags]
        if unknown:
            raise KeyError(f"No tag defined for source(s) {unknown}; known sources: {sorted(self.tags)}")
        texts = list(dict.fromkeys(self.tags[name] for name in names))
        return instruction + SEPARATOR + " ".join(texts) if texts else instruction


INFERENCE_SOURCES: tuple[str, ...] = ("seed", "augmented")
