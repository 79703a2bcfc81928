"""`humpback grpo` on the tiny model: M_k trained online with a fixed judge's reward, the judge gate, the reward and
length history, the card and pushes, and exact resume after kill -9."""

import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import ADAPTER, largest_difference
from loop_runs import copy_of_run, finish, humpback_run, statuses
from sft_adapter import SYSTEM_PROMPT, make_sft_adapter

from humpback_trl import grpo_training
from humpback_trl.calibration import load_dev_set
from humpback_trl.collators import PROMPT_SETTINGS_FILE
from humpback_trl.errors import UserError
from humpback_trl.judges import load_pairwise_dev
from humpback_trl.rewards import Judge, PointwiseReward
from humpback_trl.scripts import grpo
from humpback_trl.training import last_checkpoint

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart"
INSTRUCTIONS = [f"What is {i} plus {i}?" for i in range(5)]


@pytest.fixture(scope="module")
def m_k(tmp_path_factory, tiny_model_dir):
    return make_sft_adapter(tiny_model_dir, tmp_path_factory.mktemp("m2"))


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    """Five instructions, one of them twice and one empty row: 5 training prompts, both others counted."""
    path = tmp_path_factory.mktemp("prompts") / "scored.jsonl"
    rows = [*INSTRUCTIONS, INSTRUCTIONS[0], "  "]
    path.write_text("".join(json.dumps({"instruction": text, "output": "x"}) + "\n" for text in rows))
    return path


def recipe(folder, m_k, prompts, **overrides):
    """One prompt (2 completions) per step; 4 steps, checkpoints at 2 and 4."""
    config = {
        "sft_adapter": str(m_k), "sft_stage": "m2", "prompts": [str(prompts)], "rewards": ["rubric"],
        "allow_weak_judge": True, "dtype": "float32", "output_dir": str(folder / "out"), "use_cpu": True,
        "bf16": False, "seed": 0, "max_steps": 4, "per_device_train_batch_size": 2, "num_generations": 2,
        "max_completion_length": 12, "learning_rate": 1e-3, "beta": 0.04, "gradient_checkpointing": False,
        "logging_steps": 1, "save_steps": 2, "report_to": "none", "judge_batch_size": 16, **overrides,
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_grpo_trains_m_k_with_a_fixed_judge_and_publishes(tmp_path, m_k, prompts, tiny_model_dir, recorded_pushes):
    config = recipe(
        tmp_path, m_k, prompts, rewards=["rubric", "pairwise"], reward_weights=[1.0, 0.5], max_steps=2,
        hub_prefix="me/hb", push_to_hub=True, save_strategy="no",
    )  # fmt: skip
    trainer = grpo.run(["--config", config])
    out = tmp_path / "out"
    assert trainer.state.global_step == 2
    # The judge is a separate copy of the base, not the policy.
    assert all(reward.judge.model is not trainer.model for reward in trainer.reward_funcs)

    report = json.loads((out / "grpo_report.json").read_text())
    assert (report["rewards"], report["reward_weights"], report["self_judged"]) == (
        ["rubric", "pairwise"],
        [1, 0.5],
        False,
    )
    assert [row["metric"] for row in report["judge_accuracy"]] == ["auc", "pairwise_accuracy"]
    assert [row["dev_set"] for row in report["judge_accuracy"]] == ["builtin:dev", "builtin:pairwise_dev"]
    assert [row["rows"] for row in report["judge_accuracy"]] == [
        len(load_dev_set("builtin:dev")),
        len(load_pairwise_dev()),
    ]
    assert [row["step"] for row in report["steps"]] == [1, 2]
    for row in report["steps"]:
        watched = {"reward", "completion_length", "end_of_turn_share", "checks_passed_share", "kl"}
        assert watched | {"reward_rubric", "reward_pairwise"} <= set(row)
        assert 0 <= row["checks_passed_share"] <= 1
        assert row["reward"] == pytest.approx(row["reward_rubric"] + 0.5 * row["reward_pairwise"], abs=1e-4)
        assert 0 < row["completion_length"] <= 12 and 0 <= row["end_of_turn_share"] <= 1
    assert (out / "reward_length.png").stat().st_size > 0

    # The trained adapter alone (TRL's frozen "ref" copy is dropped), moved away from M_k, with M_k's prompt layout.
    assert not (out / "ref").exists()
    assert largest_difference(m_k, out) > 0
    assert (out / PROMPT_SETTINGS_FILE).read_text() == (m_k / PROMPT_SETTINGS_FILE).read_text()
    rows = [json.loads(line) for line in (out / "training_data.jsonl").read_text().splitlines()]
    assert [row["instruction"] for row in rows] == INSTRUCTIONS
    assert rows[0]["prompt"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert rows[0]["prompt"][1]["content"].startswith(INSTRUCTIONS[0] + "\n\nAnswer in the style of an AI Assistant.")

    card = (out / "README.md").read_text()
    assert "reward rubric (weight 1)" in card and "reward pairwise (weight 0.5)" in card
    assert "auc" in card and "pairwise_accuracy" in card and "trained with allow_weak_judge" in card
    assert "repeated instructions (left out)**: 1" in card and "empty (left out)**: 1" in card
    assert "me/hb-m2" in card and "share ending with the end-of-turn token" in card
    assert recorded_pushes == [
        ("adapter", "me/hb-m2-grpo"), ("model card", "me/hb-m2-grpo"), ("data", "me/hb-m2-grpo-data", 5),
        ("data card", "me/hb-m2-grpo-data"),
    ]  # fmt: skip


class AtChance(PointwiseReward):
    """A stub judge: every answer gets the same score, so its AUC is exactly 0.5."""

    __name__ = "rubric"

    def score(self, instructions, outputs, show_progress=False):
        return [3.0] * len(outputs)


def test_a_reward_whose_judge_is_at_chance_is_refused_before_the_policy_loads(tmp_path, m_k, prompts, monkeypatch):
    monkeypatch.setattr(grpo_training, "load_judge", lambda args, base, label: Judge("stub-judge", None, None))
    monkeypatch.setattr(grpo_training, "make_reward", lambda name, judge, args: AtChance(judge))

    def must_not_run(*args, **kwargs):
        raise AssertionError("called after the refusal should have stopped the run")

    monkeypatch.setattr(grpo_training, "load_policy", must_not_run)
    config = recipe(tmp_path, m_k, prompts, allow_weak_judge=False)
    refusal = r"reward rubric: its judge stub-judge has auc 0\.500 on builtin:dev .*0\.60"
    with pytest.raises(UserError, match=refusal):
        grpo.run(["--config", config])
    # Nothing trained; the measurement is kept, and a rerun reads it instead of scoring the dev set again.
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["_judge_calibration.json"]
    monkeypatch.setattr(grpo_training, "judge_accuracy", must_not_run)
    with pytest.raises(UserError, match=refusal):
        grpo.run(["--config", config])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"save_steps": 1, "gradient_accumulation_steps": 1, "steps_per_generation": 2}, "cannot be resumed exactly"),
        ({"rewards": ["rubric", "likelihood"], "reward_weights": [1.0]}, "one weight per reward"),
        ({"rewards": ["bleu"]}, r"rewards: \['bleu'\]"),
        ({"hub_token": "hf_secret"}, "hub_token is refused"),
    ],
)
def test_settings_that_cannot_work_are_refused_before_loading(tmp_path, m_k, prompts, overrides, message):
    with pytest.raises(ValueError, match=message):
        grpo.run(["--config", recipe(tmp_path, m_k, prompts, **overrides)])
    assert not (tmp_path / "out").exists()


def test_self_judging_is_flagged(tmp_path, m_k, prompts):
    trainer = grpo.run(["--config", recipe(tmp_path, m_k, prompts, judge_model="policy", max_steps=1)])
    assert trainer.reward_funcs[0].judge.model is trainer.model
    report = json.loads((tmp_path / "out" / "grpo_report.json").read_text())
    assert report["self_judged"] and report["judge_accuracy"][0]["judge"].startswith("the policy being trained")
    assert "self-judged**: yes" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.slow
def test_kill_9_mid_training_then_rerun_gives_the_uninterrupted_adapter(tmp_path, m_k, prompts):
    # The judge gate scores its dev set in the uninterrupted run and in the killed one: the bundled set's first two
    # instructions (12 rows, both labels) suffice here, where only the training is compared.
    dev = tmp_path / "dev.jsonl"
    load_dev_set("builtin:dev").select(range(12)).to_json(str(dev), lines=True)
    grpo.run(["--config", recipe(tmp_path / "whole", m_k, prompts, calibration_dev_set=str(dev))])
    config = recipe(tmp_path / "killed", m_k, prompts, calibration_dev_set=str(dev))
    out = tmp_path / "killed" / "out"
    command = [sys.executable, "-m", "humpback_trl.scripts.grpo", "--config", config]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while last_checkpoint(out) is None and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, stderr[-2000:]
    assert not (out / ADAPTER).exists(), "killed after training ended: nothing left to resume"

    assert grpo.run(["--config", config]).state.global_step == 4
    assert largest_difference(tmp_path / "whole" / "out", out) <= 1e-6
    whole = json.loads((tmp_path / "whole" / "out" / "grpo_report.json").read_text())["steps"]
    resumed = json.loads((out / "grpo_report.json").read_text())["steps"]
    assert [row["reward"] for row in resumed] == pytest.approx([row["reward"] for row in whole], abs=1e-6)


def test_prompts_are_counted_filtered_by_score_and_capped(tmp_path):
    path = tmp_path / "scored.jsonl"
    rows = [("a?", 4.5), ("b?", 3.0), ("a?", 4.0), (" ", 5.0), ("c?", None), ("d?", 4.2), ("e?", 4.9)]
    path.write_text("".join(json.dumps({"instruction": i, "score": s}) + "\n" for i, s in rows))
    args = grpo_training.GRPOArguments(prompts=[str(path)], prompt_min_score=4.0, max_prompts=2)
    instructions, counts = grpo_training.load_prompts(args)
    assert instructions == ["a?", "d?"]
    assert counts == {
        str(path): 4, f"{path} below prompt_min_score 4.0 (left out)": 2, f"{path} empty (left out)": 1,
        "repeated instructions (left out)": 1, "beyond max_prompts 2 (left out)": 1, "training prompts": 2,
    }  # fmt: skip
    unscored = tmp_path / "instructions.jsonl"
    unscored.write_text(json.dumps({"instruction": "x?"}) + "\n")
    with pytest.raises(UserError, match=r"no column\(s\) \['score'\]"):
        grpo_training.load_prompts(grpo_training.GRPOArguments(prompts=[str(unscored)], prompt_min_score=4))


def test_the_loop_plans_grpo_after_m_k_and_an_eval_without_the_reward_method(tmp_path):
    from humpback_trl import pipeline

    loop = pipeline.LoopArguments(output_dir=str(tmp_path / "out"), preference="grpo", model="builtin:tiny-llama")
    stages = {stage.name: stage for stage in pipeline.plan(QUICKSTART, loop)}
    assert "preferences" not in stages
    grpo_stage, evaluation = stages["m2-grpo"], stages["eval"]
    assert grpo_stage.module == "humpback_trl.scripts.grpo" and grpo_stage.upstream == ["m2", "curate-2"]
    values = pipeline.override_values(grpo_stage.overrides)
    assert values["sft_adapter"] == str(tmp_path / "out" / "m2")
    assert values["prompts"] == str(tmp_path / "out" / "curate-2" / "scored.jsonl")
    assert values["allow_weak_judge"] == "true"  # a plumbing model: its judge is at chance (tests/test_plumbing.py)
    assert "m2-grpo" in evaluation.upstream
    # The quickstart rewards with likelihood and its eval judges with [likelihood, rubric] on the same base model:
    # the eval keeps the rubric only.
    assert pipeline.override_values(evaluation.overrides)["judge_method"] == "rubric"
    real = pipeline.LoopArguments(output_dir=str(tmp_path / "out"), preference="grpo")
    assert "allow_weak_judge" not in pipeline.override_values(pipeline.plan(QUICKSTART, real)[-2].overrides)


@pytest.mark.parametrize(("logged", "shown"), [(2, [1, 2]), (5, [1, 2, 3, 4, 5]), (50, [1, 8, 15, 22, 29, 36, 43, 50])])
def test_the_loop_report_lists_steps_evenly_with_the_last(logged, shown):
    report = {
        "stage": "m2-grpo", "judge_accuracy": [], "reward_weights": [], "weak": [], "self_judged": False,
        "min_judge_accuracy": 0.6,
        "steps": [{"step": i, "reward": 0.5, "completion_length": 10.0, "end_of_turn_share": 1.0,
                   "checks_passed_share": 0.75, "kl": 0.0} for i in range(1, logged + 1)],
    }  # fmt: skip
    lines = grpo_training.summary(report, max_rows=8)
    assert [key for key in lines if key.startswith("step ")] == [f"step {i}" for i in shown]
    assert lines[f"step {logged}"] == "reward 0.5 | length 10.0 tokens | end-of-turn 1.0 | checks passed 0.75 | KL 0.0"


@pytest.mark.slow
def test_the_quickstart_loop_trains_a_grpo_adapter_and_reports_reward_and_length(loop_recipes, first_run, tmp_path):
    """`humpback run recipes/quickstart/ --model builtin:tiny-llama --preference grpo`, shortened (tests/loop_runs.py),
    on a copy of the shared loop's folder: its stages up to M2 are up to date, so M2-grpo and the eval run."""
    out = copy_of_run(first_run[0], tmp_path / "out")
    output = finish(humpback_run(loop_recipes, out, "--model", "builtin:tiny-llama", "--preference", "grpo"))
    assert statuses(output) == {
        **dict.fromkeys(["corpus", "myx", "augment", "magpie", "m0", "curate-1", "m1", "curate-2", "m2"], "up to date"),
        **dict.fromkeys(["m2-grpo", "eval"], "running"),
    }

    assert (out / "m2-grpo" / ADAPTER).is_file()
    config = json.loads((out / "m2-grpo" / "adapter_config.json").read_text())
    assert (
        config["base_model_name_or_path"]
        == json.loads((out / "m2" / "adapter_config.json").read_text())["base_model_name_or_path"]
    )
    report = json.loads((out / "report.json").read_text())
    assert [row["step"] for row in report["grpo"]["steps"]] == [1, 2]
    assert report["grpo"]["judge"] == "builtin:tiny-llama" and report["grpo"]["weak"] == ["likelihood"]
    assert set(report["preferences"]) == {"stage", "reward likelihood (weight 1)", "step 1", "step 2"}
    markdown = (out / "report.md").read_text()
    assert "| step 2 | reward " in markdown and " tokens \\| end-of-turn " in markdown
    assert (out / "m2-grpo" / "reward_length.png").is_file()
    # The eval compares M2-grpo with M2 under the same base model, but not by the likelihood that rewarded it.
    evaluation = report["evaluation"]
    assert "M2-grpo" in json.dumps(evaluation)
    command = json.loads((out / ".stages" / "eval.json").read_text())["command"]
    assert "--judge_method rubric" in command and "likelihood" not in command.split("--judge_method")[1]


class FixedRewards:
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        return "rewards"


class Watched(grpo_training.WatchMixin, FixedRewards):
    """The watch alone, on one process: metrics in a dict, gather the identity."""

    def __init__(self) -> None:
        self._metrics = {"train": defaultdict(list)}
        self.model = SimpleNamespace(training=True)
        self.accelerator = SimpleNamespace(device="cpu", gather=lambda tensor: tensor)
        self.stop_ids = frozenset({7})


def test_the_watch_counts_end_of_turn_and_answers_that_copy_their_instruction():
    question = "How do I bake a loaf of bread at home?"
    answers = [
        "Mix flour, water, salt and yeast, knead, let it rise and bake.",  # ends its turn, passes
        "How do I bake a loaf of bread at home? How do I bake a loaf",  # copies its instruction
        "Knead the dough well and bake it for forty minutes",  # passes, cut off before the end of its turn
        "",  # empty: the checks pass it (too_long allows an instruction of 200 characters whatever its output)
    ]
    inputs = [{"prompt": [{"role": "user", "content": question + " (tags)"}], "instruction": question}] * 4
    completions = [[{"role": "assistant", "content": answer}] for answer in answers]
    ids = [[3, 7], [4, 7], [5, 6], [7]]
    watched = Watched()
    assert watched._calculate_rewards(inputs, [row["prompt"] for row in inputs], completions, ids) == "rewards"
    assert watched._metrics["train"][grpo_training.END_OF_TURN_METRIC] == [0.75]
    reasons = [grpo_training.InstructionChecks().reason(question, answer) for answer in answers]
    assert reasons == [None, "copied", None, None]
    assert watched._metrics["train"][grpo_training.CHECKS_METRIC] == [0.75]
