"""The rewrite stage (back-and-forth translation): faithfulness figures against an independent computation, the
floors and both on_unfaithful policies with exact counts, resume after kill -9, the stage hash and the loop."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT
from loop_runs import copy_of_run, finish, humpback_run, statuses

from humpback_trl import pipeline
from humpback_trl import rewrite as rewrite_module
from humpback_trl.chat_template import encode, render
from humpback_trl.modeling import InferenceModelArguments, load_model
from humpback_trl.rewrite import RewriteArguments, lexical_check
from humpback_trl.scripts import rewrite as rewrite_script

# instruction, source (the curated output), the stub writer's reply, and what the checks make of it
PAIRS = [
    ("When did the bridge open?", "The bridge opened in 1999. It has 6 lanes and a footpath.",
     "The bridge opened in 1999; it has 6 lanes and a footpath.", ""),
    ("How do I bake bread?", "Mix flour, water and salt, then bake the loaf for 30 minutes.",
     "Mix flour, water and salt, then bake the loaf for 45 minutes at 220 degrees.", "new_numbers"),
    ("What is the capital of France?", "Paris is the capital and largest city of France.",
     "Quantum chromodynamics describes gluons binding quarks inside hadrons.", "lexical"),
    ("Name a prime number.", "Seven is a prime number: it has no divisor but one and itself.", "", "empty_rewrite"),
]  # fmt: skip
LOOSE = ["--min_pmi", "-1000"]  # the tiny random model's PMI is noise: the lexical checks decide these counts


def write_pairs(path: Path, n_copies: int = 1) -> Path:
    rows = [
        {"instruction": instruction, "output": source, "source": "augmented", "source_id": f"doc{i}-{copy}",
         "score": 4.0 + i / 10}
        for copy in range(n_copies)
        for i, (instruction, source, _, _) in enumerate(PAIRS)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def stub_writer(monkeypatch):
    """The writer's engine replaced by fixed replies, looked up by the instruction inside each prompt."""
    replies = {instruction: reply for instruction, _, reply, _ in PAIRS}

    def fake_generate(model, tokenizer, prompts, sampling, token_budget=16384, *rest):
        return [next(reply for key, reply in replies.items() if key in prompt) for prompt in prompts]

    monkeypatch.setattr(rewrite_module, "generate", fake_generate)


def run_rewrite(tmp_path, model_dir, *extra, out="rewrite"):
    pairs = write_pairs(tmp_path / "a5.jsonl")
    argv = ["--pairs", str(pairs), "--model_name_or_path", str(model_dir), "--output_dir", str(tmp_path / out),
            "--engine", "transformers", "--curation_engine", "transformers", "--shard_size", "3", *extra]  # fmt: skip
    return rewrite_script.run(argv)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_lexical_check_by_hand():
    check = lexical_check(
        "In 1999 the bridge opened with 4 lanes.", "The bridge opened in 1999. It has 6 lanes.", "When?"
    )
    # numbers 1999 (found) and 4 (not); content words bridge, opened, lanes (all found): 4 of 5.
    assert check.share == pytest.approx(4 / 5) and check.new_numbers == ["4"]
    # A number the instruction gives ("5 ways") is grounded; thousands separators do not make a new number.
    assert lexical_check("Here are 5 ways, 1,024 of them", "ways: 1024", "List 5 ways").new_numbers == []
    assert lexical_check("It is.", "Anything", "Any").share is None  # nothing to check


def plain_mean_logprob(model, tokenizer, user: str, output: str) -> float:
    """One plain forward pass over the rendered prompt followed by the output; the mean log-probability of the
    output's tokens."""
    prompt = encode(tokenizer, render(tokenizer, [{"role": "user", "content": user}], True))
    ids = encode(tokenizer, render(tokenizer, [{"role": "user", "content": user}], True) + output)
    assert ids[: len(prompt)] == prompt
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logprobs = torch.log_softmax(logits[:-1], dim=-1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    return float(logprobs[len(prompt) - 1 :].mean())


def test_stage_figures_match_an_independent_computation_and_decisions(tmp_path, tiny_model_dir, monkeypatch):
    stub_writer(monkeypatch)
    run_rewrite(tmp_path, tiny_model_dir, *LOOSE)
    rows = read_jsonl(tmp_path / "rewrite" / "rewrites.jsonl")
    assert [row["reason"] for row in rows] == [reason for *_, reason in PAIRS]
    assert [row["decision"] for row in rows] == ["rewritten", "kept_original", "kept_original", "kept_original"]
    # the invented numbers are named; the rewrite keeps its instruction and its original output
    assert rows[1]["new_numbers"] == ["45", "220"]
    assert rows[1]["original_output"] == PAIRS[1][1] and rows[1]["rewrite"] == PAIRS[1][2]
    model, tokenizer = load_model(InferenceModelArguments(model_name_or_path=str(tiny_model_dir)))
    for row, (instruction, source, reply, _) in zip(rows, PAIRS, strict=True):
        assert row["lexical"] == pytest.approx(lexical_check(reply, source, instruction).share)
        if not reply:
            assert row["pmi"] is None and row["rewrite_score"] is None
            continue
        with_source = plain_mean_logprob(model, tokenizer, f"{instruction}\n\n{source}", reply)
        without = plain_mean_logprob(model, tokenizer, instruction, reply)
        assert row["lp_with_source"] == pytest.approx(with_source, abs=1e-5)
        assert row["pmi"] == pytest.approx(with_source - without, abs=1e-5)
        assert 1 <= row["rewrite_score"] <= 5  # scored by the curation method like any candidate
    report = json.loads((tmp_path / "rewrite" / "report.json").read_text())
    assert (report["pairs in"], report["rewritten"], report["rejected as unfaithful"]) == (4, 3, 3)
    assert report["distributions"]["pmi"]["n"] == 3 and len(report["examples"]) == 3
    assert "pairs in**: 4" in (tmp_path / "rewrite" / "report.md").read_text()
    card = (tmp_path / "rewrite" / "README.md").read_text()
    assert "Keep every fact, number, name and step" in card  # the prompt is on the card


@pytest.mark.parametrize(
    ("policy", "rewritten_ids"),
    [("keep_original", ["doc0-0#rewrite", "doc1-0", "doc2-0", "doc3-0"]), ("drop", ["doc0-0#rewrite"])],
)
def test_on_unfaithful_policies_with_exact_counts(tmp_path, tiny_model_dir, monkeypatch, policy, rewritten_ids):
    stub_writer(monkeypatch)
    run_rewrite(tmp_path, tiny_model_dir, *LOOSE, "--on_unfaithful", policy)
    out = tmp_path / "rewrite"
    rewritten = read_jsonl(out / "rewritten.jsonl")
    assert [row["source_id"] for row in rewritten] == rewritten_ids
    assert rewritten[0]["output"] == PAIRS[0][2]
    if policy == "keep_original":
        assert [row["output"] for row in rewritten[1:]] == [source for _, source, _, _ in PAIRS[1:]]
    assert [row["source_id"] for row in read_jsonl(out / "accepted.jsonl")] == ["doc0-0#rewrite"]
    report = json.loads((out / "report.json").read_text())
    dropped = 3 if policy == "drop" else 0
    assert report["kept (rewrites)"] == 1 and report["dropped"] == dropped
    assert report["kept (originals of rejected rewrites)"] == 3 - dropped and report["pairs out"] == 4 - dropped
    assert [report[f"rejected: {r}"] for r in rewrite_module.REASONS] == [1, 1, 1, 0, 0]


def test_pmi_and_score_floors_reject_with_their_reason(tmp_path, tiny_model_dir, monkeypatch):
    stub_writer(monkeypatch)
    run_rewrite(tmp_path, tiny_model_dir, "--min_pmi", "1000", out="strict")
    assert [row["reason"] for row in read_jsonl(tmp_path / "strict" / "rewrites.jsonl")][0] == "pmi"
    # Floors apply after the shards: a changed floor reuses every rewrite and figure.
    run_rewrite(tmp_path, tiny_model_dir, *LOOSE, "--min_rewrite_score", "6", out="strict")
    rows = read_jsonl(tmp_path / "strict" / "rewrites.jsonl")
    assert [row["reason"] for row in rows] == ["score", "new_numbers", "lexical", "empty_rewrite"]


def test_prompt_is_checked_and_a_changed_prompt_never_reuses_shards(tmp_path, tiny_model_dir, monkeypatch):
    with pytest.raises(ValueError, match="lacks \\{source\\}"):
        RewriteArguments(pairs="x", rewrite_prompt="Rewrite {instruction}")
    stub_writer(monkeypatch)
    run_rewrite(tmp_path, tiny_model_dir, *LOOSE)
    with pytest.raises(ValueError, match="different job"):
        run_rewrite(tmp_path, tiny_model_dir, *LOOSE, "--rewrite_prompt", "Say it again: {instruction} {source}")


def test_stage_hash_changes_with_the_prompt_and_not_with_a_comment(tmp_path):
    loop = pipeline.LoopArguments(output_dir=str(tmp_path / "out"), rewrite="replace")
    config = pipeline.find_accelerate_config(loop.accelerate_config, ROOT / "recipes" / "quickstart")
    base = yaml.safe_load((ROOT / "recipes" / "quickstart" / "rewrite.yaml").read_text())

    def digest(text: str) -> str:
        recipe = tmp_path / "rewrite.yaml"
        recipe.write_text(text)
        stage = pipeline.Stage("rewrite-1", "humpback_trl.scripts.rewrite", recipe, ["--iteration", "1"], [])
        return pipeline.stage_hash(stage, loop, config, [], {})

    original = digest(yaml.safe_dump(base))
    assert digest("# a comment\n" + yaml.safe_dump(base)) == original
    assert digest(yaml.safe_dump({**base, "rewrite_prompt": "Answer {instruction} from {source}."})) != original


def test_plan_inserts_rewrite_stages_and_picks_each_models_data(tmp_path):
    folder = ROOT / "recipes" / "quickstart"
    out = tmp_path / "out"

    def stages(mode: str) -> dict[str, pipeline.Stage]:
        loop = pipeline.LoopArguments(output_dir=str(out), rewrite=mode, model="builtin:tiny-llama")
        return {stage.name: stage for stage in pipeline.plan(folder, loop)}

    def data(stage: pipeline.Stage) -> list[str]:
        values = pipeline.override_values(stage.overrides)["data"]
        return values if isinstance(values, list) else [values]

    assert "rewrite-1" not in stages("none")
    replace = stages("replace")
    names = list(replace)
    assert names.index("curate-1") < names.index("rewrite-1") < names.index("m1") < names.index("curate-2")
    assert data(replace["m1"]) == ["builtin:seed", str(out / "rewrite-1" / "rewritten.jsonl")]
    assert "rewrite-1" in replace["m1"].upstream
    command = pipeline.override_values(replace["rewrite-2"].overrides)
    assert command["pairs"] == str(out / "curate-2") and command["adapter"] == str(out / "m1")
    assert command["rewrite_model"] == "builtin:tiny-llama"  # the run's base chat model
    add = stages("add")
    assert data(add["m2"]) == [
        "builtin:seed", str(out / "curate-2" / "a5.jsonl"), str(out / "rewrite-2" / "accepted.jsonl")
    ]  # fmt: skip


def test_resume_after_kill_9_loses_and_duplicates_nothing(tmp_path, tiny_model_dir):
    """Killed with SIGKILL mid-stage, the rerun resumes from the finished shards and ends with the data of a run that
    was never interrupted."""
    pairs = write_pairs(tmp_path / "a5.jsonl", n_copies=3)

    def argv(out: str) -> list[str]:
        return ["--pairs", str(pairs), "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / out),
                "--engine", "transformers", "--curation_engine", "transformers", "--shard_size", "1",
                "--max_new_tokens", "24", *LOOSE]  # fmt: skip

    shards = tmp_path / "killed" / "generation" / "shards"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    process = subprocess.Popen([sys.executable, "-m", "humpback_trl.scripts.rewrite", *argv("killed")], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not list(shards.glob("shard-*.jsonl")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {stderr[-2000:]}"
    finished = {path.name: path.read_text() for path in shards.glob("shard-*.jsonl")}
    assert 1 <= len(finished) < 12, "the kill must land mid-stage"
    assert not (tmp_path / "killed" / "rewrites.jsonl").exists()

    resumed = rewrite_script.run(argv("killed"))
    assert {name: (shards / name).read_text() for name in finished} == finished, "finished shards are kept"
    assert resumed["source_id"] == [f"doc{i}-{copy}" for copy in range(3) for i in range(4)]
    uninterrupted = rewrite_script.run(argv("whole"))
    assert resumed.to_list() == uninterrupted.to_list()
    for name in ("rewritten", "accepted"):
        assert (tmp_path / "killed" / f"{name}.jsonl").read_text() == (tmp_path / "whole" / f"{name}.jsonl").read_text()


def test_loop_with_rewrite_replace_trains_m1_on_the_rewritten_pairs(loop_recipes, first_run, tmp_path):
    """`humpback run recipes/quickstart/ --model builtin:tiny-llama --rewrite replace`, shortened to one iteration
    (tests/loop_runs.py), on a copy of the shared loop's folder: its stages up to curate-1 are up to date, so the
    rewrite runs, and M1 again on the rewritten pairs."""
    out = copy_of_run(first_run[0], tmp_path / "out")
    output = finish(
        humpback_run(loop_recipes, out, "--model", "builtin:tiny-llama", "--rewrite", "replace", "--iterations", "1",
                     "--preference", "none", "--evaluate", "false")
    )  # fmt: skip
    assert statuses(output) == {
        **dict.fromkeys(["corpus", "myx", "augment", "magpie", "m0", "curate-1"], "up to date"),
        **dict.fromkeys(["rewrite-1", "m1"], "running"),
    }
    rows = read_jsonl(out / "rewrite-1" / "rewrites.jsonl")
    a5 = read_jsonl(out / "curate-1" / "a5.jsonl")
    assert [row["source_id"] for row in rows] == [row["source_id"] for row in a5] and rows
    assert {"instruction", "original_output", "rewrite", "pmi", "lexical", "decision"} <= set(rows[0])
    training = read_jsonl(out / "m1" / "training_data.jsonl")
    rewritten = read_jsonl(out / "rewrite-1" / "rewritten.jsonl")
    trained = [row["source_id"] for row in training if row["source"] != "seed"]
    assert trained == [row["source_id"] for row in rewritten]
    accepted = [row for row in rows if row["decision"] == "rewritten"]
    assert {row["output"] for row in training if row["source_id"].endswith("#rewrite")} == {
        row["rewrite"] for row in accepted
    }
    report = json.loads((out / "report.json").read_text())
    assert report["rewrite"][0]["pairs in"] == len(a5)
    assert "rewrite-1" in (out / "report.md").read_text()


@pytest.mark.parametrize("folder", sorted((ROOT / "recipes").glob("*/rewrite.yaml")), ids=lambda p: p.parent.name)
def test_every_rewrite_recipe_parses_as_its_loop_stage(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    loop = pipeline.LoopArguments(output_dir=str(tmp_path), rewrite="add", iterations=1)
    stages = {stage.name: stage for stage in pipeline.plan(folder.parent, loop)}
    (tmp_path / "m0").mkdir()  # the scorer's adapter: a missing local model fails at parse time
    stage = stages["rewrite-1"]
    args, model_args, settings = rewrite_script.make_parser().parse_args_and_config(
        ["--config", str(stage.recipe), *stage.overrides]
    )
    assert args.rewrite_prompt == rewrite_module.DEFAULT_REWRITE_PROMPT and args.iteration == 1
    assert model_args.adapter == str(tmp_path / "m0") and settings.curation_engine == "transformers"
    assert args.rewrite_model is not None  # the recipe's chat model, else the run's base model


def test_an_empty_curated_split_writes_empty_files_and_a_zero_funnel(tmp_path, tiny_model_dir):
    (tmp_path / "a5.jsonl").write_text("")
    rewrite_script.run(["--pairs", str(tmp_path / "a5.jsonl"), "--model_name_or_path", str(tiny_model_dir),
                        "--output_dir", str(tmp_path / "out")])  # fmt: skip
    for name in ("rewrites", "rewritten", "accepted"):
        assert (tmp_path / "out" / f"{name}.jsonl").read_text() == ""
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (report["pairs in"], report["pairs out"], report["examples"]) == (0, 0, [])


def test_push_names_the_rewritten_repo_and_links_the_curated_split(tmp_path, tiny_model_dir, monkeypatch):
    from datasets import Dataset
    from huggingface_hub import DatasetCard

    pushed = []
    monkeypatch.setattr(Dataset, "push_to_hub", lambda self, repo, **kw: pushed.append(("data", repo, len(self))))
    monkeypatch.setattr(DatasetCard, "push_to_hub", lambda self, repo, **kw: pushed.append(("card", repo)))
    stub_writer(monkeypatch)
    run_rewrite(tmp_path, tiny_model_dir, *LOOSE, "--on_unfaithful", "drop", "--iteration", "2",
                "--hub_prefix", "me/hb", "--push_to_hub", "true")  # fmt: skip
    assert pushed == [("data", "me/hb-rewritten-2", 1), ("card", "me/hb-rewritten-2")]
    card = (tmp_path / "rewrite" / "README.md").read_text()
    assert "me/hb-curated-2 (split a5)" in card and "me/hb-candidates" in card


def test_on_smollm2_a_rewrite_of_its_source_gains_likelihood_from_it_and_an_unrelated_one_does_not(
    tmp_path, smollm2_dir, monkeypatch
):
    stub_writer(monkeypatch)
    run_rewrite(tmp_path, smollm2_dir)
    faithful, _, unrelated, empty = read_jsonl(tmp_path / "rewrite" / "rewrites.jsonl")
    assert faithful["pmi"] > 0.5 > unrelated["pmi"]
    assert faithful["decision"] == "rewritten" and unrelated["reason"] == "lexical" and empty["pmi"] is None
    assert 1 <= faithful["rewrite_score"] <= 5
