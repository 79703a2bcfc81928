"""Instruction checks: each rule on hand-made instructions, exact counts, and their place in curation."""

import pytest
from datasets import Dataset

from humpback_trl.curation import CurationSettings, curate
from humpback_trl.instruction_checks import CHECKS, DEFAULT_CHECKS, InstructionChecks, check_counts, check_reasons
from humpback_trl.pairs import PAIR_FEATURES, make_pair

SEGMENT = (
    "In general, a descriptor is an object attribute with binding behavior, one whose attribute access has been "
    "overridden by methods in the descriptor protocol: __get__(), __set__(), and __delete__(). If any of those "
    "methods are defined for an object, it is said to be a descriptor. The default behavior for attribute access is "
    "to get, set, or delete the attribute from an object's dictionary."
)
# (instruction, the first check it fails with every check on); junk as the demo's 10-step backward adapter wrote it.
CASES = [
    ("False", "too_short"),
    ("   ", "too_short"),
    ("What is a descriptor in Python?", None),
    ("How do __get__ and __set__ customise attribute access?", None),
    # A paraphrase of the whole segment: longer than half of it, so a restatement cannot win on likelihood.
    (
        "Descriptors are object attributes with binding behaviour: their attribute access is overridden by the "
        "methods __get__, __set__ and __delete__ of the descriptor protocol, and an object defining any of them is "
        "a descriptor, while the default is to get, set or delete the attribute in the object's dictionary.",
        "too_long",
    ),
    ("The most likely question or instruction is: " * 4, "loop"),
    ("What is the most likely question or instruction that the text can answer?", "prompt_echo"),
    ("The most likely question or instruction in this scenario is: What is a descriptor?", "prompt_echo"),
    ("A descriptor is an object attribute with binding behavior, one whose attribute access", "copied"),
    ("Provide a more specific answer.", "unrelated"),
]


@pytest.mark.parametrize(("instruction", "expected"), CASES)
def test_each_check_on_hand_made_instructions(instruction: str, expected: str | None) -> None:
    assert InstructionChecks(enabled=CHECKS).reason(instruction, SEGMENT) == expected


def test_counts_are_exact_and_unrelated_is_off_by_default() -> None:
    instructions = [instruction for instruction, _ in CASES]
    every = InstructionChecks(enabled=CHECKS)
    counts = check_counts(check_reasons(every, instructions, [SEGMENT] * len(CASES)), every)
    assert counts == {
        "passed": 2, "too_short": 2, "too_long": 1, "loop": 1, "prompt_echo": 2, "copied": 1, "unrelated": 1
    }  # fmt: skip
    default = InstructionChecks()
    assert default.enabled == DEFAULT_CHECKS and "unrelated" not in DEFAULT_CHECKS
    counts = check_counts(check_reasons(default, instructions, [SEGMENT] * len(CASES)), default)
    assert counts == {"passed": 3, "too_short": 2, "too_long": 1, "loop": 1, "prompt_echo": 2, "copied": 1}


def test_limits_and_errors() -> None:
    assert InstructionChecks(min_chars=40).reason("What is a descriptor in Python?", SEGMENT) == "too_short"
    # Short outputs keep an allowance: a 150-character question for a 100-character answer is not a restatement.
    question = (
        "Could you explain, with a short example in Python and a note on when I would need one in my own classes, "
        "what a descriptor is?"
    )
    assert len(question) > 100 and InstructionChecks().reason(question, "x" * 100) is None
    # The echo check reads the backward prompt it is given.
    custom = "Which user request does this text answer?\n\n{output}"
    assert InstructionChecks(backward_prompt=custom).reason("Which request does it answer?", SEGMENT) is None
    assert InstructionChecks(backward_prompt=custom).reason("Which user request does this text", SEGMENT) == (
        "prompt_echo"
    )
    with pytest.raises(ValueError, match=r"instruction_checks: \['vibes'\] not among"):
        InstructionChecks(enabled=("vibes",))
    with pytest.raises(ValueError, match="max_copied_share"):
        InstructionChecks(max_copied_share=0.0)
    with pytest.raises(ValueError, match="instruction_checks"):
        CurationSettings(instruction_checks=["loop", "vibes"])
    assert CurationSettings(instruction_checks=["none"]).checks.enabled == ()


def test_rejected_pairs_stay_in_the_scored_pool_with_their_reason(tmp_path, tiny_model, tiny_tokenizer) -> None:
    """No check-rejected pair is scored or selected, and none is dropped: the paraphrase of the segment does not
    outscore the real question whatever the model thinks of it."""
    rows = [make_pair(instruction, SEGMENT, "augmented", f"seg#{n}") for n, (instruction, _) in enumerate(CASES)]
    pool = Dataset.from_list(rows, features=PAIR_FEATURES)
    settings = CurationSettings(
        curation_mode="likelihood", instruction_checks=list(CHECKS), a4_fraction=1.0, a5_fraction=1.0,
        one_pair_per_segment=False, calibration_dev_set=None,
    )  # fmt: skip
    curated, summary = curate(
        tiny_model, tiny_tokenizer, pool, settings, iteration=1, scorer="m0", output_dir=tmp_path / "c"
    )
    scored = curated["scored"]
    assert len(scored) == len(CASES)
    assert scored["check"] == [expected for _, expected in CASES]
    for row in scored:
        assert (row["score"] is None) == (row["check"] is not None)
        assert (row["pmi"] is None) == (row["check"] is not None)
    assert sorted(curated["a5"]["instruction"]) == sorted(i for i, expected in CASES if expected is None)
    assert summary["checks"]["passed"] == 2 and summary["rejected_by_checks"] == 8 and summary["unparsed"] == 0
    assert summary["passed_checks_share"] == 0.2
    assert "Instruction checks: 2 of 10 candidates passed (20%)" in (tmp_path / "c" / "report.md").read_text()
