"""Plumbing models (builtin_models.is_plumbing_model: builtin:tiny-llama, random weights): the loop's plan runs the
curate stages without instruction checks and the GRPO stage with allow_weak_judge for them, so every stage carries
data; a real model gets neither, unless the loop's allow_weak_judge is set, which reaches the GRPO stage alone and its
hash. Plans only: nothing here loads a model."""

import pytest
from conftest import ROOT

from humpback_trl import pipeline
from humpback_trl.builtin_models import SMOLLM2, is_plumbing_model
from humpback_trl.tiny import TINY_MODEL

QUICKSTART = ROOT / "recipes" / "quickstart"
RELAXED = ("instruction_checks", "allow_weak_judge")
CHECKS_OFF = {"instruction_checks": "none"}
WEAK = {"allow_weak_judge": "true"}
NOTE = (
    "builtin:tiny-llama is a plumbing model (random weights, so the text is noise and the judges are at chance); the "
    "curate stages run with --instruction_checks none and the GRPO stage with --allow_weak_judge true (its reward "
    "marked WEAK), so every stage carries data"
)


def loop_of(tmp_path, **changes) -> pipeline.LoopArguments:
    values = {"output_dir": str(tmp_path / "out"), "preference": "grpo", "rewrite": "replace", **changes}
    return pipeline.LoopArguments(**values)


def relaxed(loop: pipeline.LoopArguments) -> dict[str, dict[str, str]]:
    """The stages whose overrides relax a check, with those overrides."""
    found = {}
    for stage in pipeline.plan(QUICKSTART, loop):
        values = pipeline.override_values(stage.overrides)
        if any(key in values for key in RELAXED):
            found[stage.name] = {key: values[key] for key in RELAXED if key in values}
    return found


def test_only_the_tiny_random_model_is_a_plumbing_model():
    assert is_plumbing_model(TINY_MODEL)
    assert not any(is_plumbing_model(name) for name in (SMOLLM2, "HuggingFaceTB/SmolLM2-135M-Instruct", None))


def test_a_tiny_model_plan_runs_curation_without_checks_and_grpo_with_a_weak_judge(tmp_path):
    loop = loop_of(tmp_path, model=TINY_MODEL)
    assert relaxed(loop) == {"curate-1": CHECKS_OFF, "curate-2": CHECKS_OFF, "m2-grpo": WEAK}
    assert pipeline.plumbing_note(QUICKSTART, loop) == NOTE


@pytest.mark.parametrize("model", [SMOLLM2, None], ids=["named", "the recipes' own"])
def test_a_real_model_gets_neither_unless_the_loop_allows_a_weak_judge(tmp_path, model):
    assert relaxed(loop_of(tmp_path, model=model)) == {}
    assert pipeline.plumbing_note(QUICKSTART, loop_of(tmp_path, model=model)) is None
    assert relaxed(loop_of(tmp_path, model=model, allow_weak_judge=True)) == {"m2-grpo": WEAK}


def test_each_relaxation_follows_the_model_it_is_about(tmp_path):
    # The instructions' writer is the backward model: its noise is what the checks would reject.
    backward = loop_of(tmp_path, model=SMOLLM2, backward_model=TINY_MODEL)
    assert relaxed(backward) == {"curate-1": CHECKS_OFF, "curate-2": CHECKS_OFF}
    assert pipeline.plumbing_note(QUICKSTART, backward) == (
        "builtin:tiny-llama is a plumbing model (random weights, so the text is noise and the judges are at chance); "
        "the curate stages run with --instruction_checks none, so every stage carries data"
    )
    # The GRPO reward's judge is the loop's judge_model: at chance, it is allowed to be weak.
    assert relaxed(loop_of(tmp_path, model=SMOLLM2, judge_model=TINY_MODEL)) == {"m2-grpo": WEAK}
    # A real judge of a tiny policy is gated as any judge.
    assert relaxed(loop_of(tmp_path, model=TINY_MODEL, judge_model=SMOLLM2)) == {
        "curate-1": CHECKS_OFF, "curate-2": CHECKS_OFF
    }  # fmt: skip
    # Without GRPO there is no judge to allow.
    assert relaxed(loop_of(tmp_path, model=TINY_MODEL, preference="dpo")) == {
        "curate-1": CHECKS_OFF, "curate-2": CHECKS_OFF
    }  # fmt: skip


def test_allow_weak_judge_changes_the_grpo_stage_hash_alone(tmp_path):
    config = pipeline.find_accelerate_config("accelerate_configs/cpu.yaml", QUICKSTART)

    def hashes(loop: pipeline.LoopArguments) -> dict[str, str]:
        found: dict[str, str] = {}
        for stage in pipeline.plan(QUICKSTART, loop):
            found[stage.name] = pipeline.stage_hash(stage, loop, config, [found[n] for n in stage.upstream], {})
        return found

    gated, weak = (
        hashes(loop_of(tmp_path, model=SMOLLM2)),
        hashes(loop_of(tmp_path, model=SMOLLM2, allow_weak_judge=True)),
    )
    # The eval stage follows the GRPO model it compares.
    assert {name for name in gated if gated[name] != weak[name]} == {"m2-grpo", "eval"}
