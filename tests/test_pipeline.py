"""The whole loop on CPU: a consistent report, skipping finished stages, kill -9 and resume, --from, and reruns
of stages whose recipe changed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from humpback_trl import pipeline
from humpback_trl.scripts import run as run_script

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart"
FAST = {  # the quickstart recipes, shortened so the loop runs in about a minute (on the tiny model, see below)
    "backward.yaml": {"max_steps": 3, "save_steps": 2},
    "seed.yaml": {"max_steps": 3, "save_steps": 2, "curation_shard_size": 8},
    "augment.yaml": {"max_new_tokens": 8, "shard_size": 8, "max_segments": 12},
    "corpus.yaml": {},
    "magpie.yaml": {
        "num_samples": 8,
        "num_turns": 1,
        "instruction_max_new_tokens": 8,
        "response_max_new_tokens": 8,
        "curate": False,
    },
}


@pytest.fixture(scope="module")
def recipes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recipes")
    for name, changes in FAST.items():
        config = {**yaml.safe_load((QUICKSTART / name).read_text()), **changes}
        (folder / name).write_text(yaml.safe_dump(config))
    loop = {
        **yaml.safe_load((QUICKSTART / "loop.yaml").read_text()),
        "accelerate_config": str(ROOT / "accelerate_configs/cpu.yaml"),
        "magpie": "candidates",
        # The quickstart recipes name the real model; the loop's override runs every stage on the tiny one.
        "model": "builtin:tiny-llama",
    }
    (folder / "loop.yaml").write_text(yaml.safe_dump(loop))
    return folder


def humpback_run(recipes, output_dir, *extra, **popen):
    command = [sys.executable, "-m", "humpback_trl.cli", "run", str(recipes), "--output_dir", str(output_dir), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def finish(process, timeout=600):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-4000:]
    return output


def statuses(output):
    return {
        line.split(":")[0].split()[-1]: line.split(": ")[1].split(",")[0]
        for line in output.splitlines()
        if line.startswith("[humpback] ") and ": " in line
    }


@pytest.fixture(scope="module")
def first_run(recipes, tmp_path_factory):
    out = tmp_path_factory.mktemp("loop") / "out"
    return out, finish(humpback_run(recipes, out))


def test_loop_report_is_consistent(first_run):
    out, output = first_run
    assert statuses(output) == dict.fromkeys(["corpus", "myx", "augment", "magpie", "m0", "m1", "m2"], "running")
    assert "accelerate launch --config_file" in output and "-m humpback_trl.scripts.augment" in output
    report = json.loads((out / "report.json").read_text())
    assert report["seed"] == 181 and report["documents"] == 79 and report["candidates"] == 12
    assert [it["iteration"] for it in report["iterations"]] == [1, 2]
    magpie = [json.loads(line) for line in (out / "magpie" / "magpie.jsonl").read_text().splitlines()]
    assert report["magpie_pairs"] == len(magpie) > 0 and {row["source"] for row in magpie} == {"magpie"}
    for it, scorer in zip(report["iterations"], ["m0", "m1"], strict=True):
        # MAGPIE pairs join the backtranslation candidates and are curated with them.
        assert it["a5"] <= it["a4"] <= it["candidates"] == report["candidates"] + len(magpie)
        assert sum(it["per_score"].values()) + it["unparsed"] == it["candidates"]
        assert Path(it["scorer"]).name == scorer
        assert it["training_pairs"] == report["seed"] + it["a5"]
        assert sum(it["histogram"]["counts"]) == it["candidates"] - it["unparsed"]
        top = [pair["score"] for pair in it["top_pairs"]]
        assert len(top) == 3 and top == sorted(top, reverse=True)
    assert {"report.md", "scores.png"} <= {p.name for p in out.iterdir()}
    assert "## Iteration 2" in (out / "report.md").read_text() and "Artifacts:" in output
    for stage in ("myx", "m0", "m1", "m2"):
        assert (out / stage / "adapter_model.safetensors").is_file()


def test_every_stage_ran_on_the_overriding_model(first_run):
    out, output = first_run
    for stage in ("myx", "m0", "m1", "m2"):
        config = json.loads((out / stage / "adapter_config.json").read_text())
        assert Path(config["base_model_name_or_path"]).name.startswith("tiny-llama-"), stage
    assert output.count("--model_name_or_path builtin:tiny-llama") == 6  # myx, augment, magpie, m0, m1, m2


def test_report_shows_the_corpus_funnel_the_backward_output_and_stage_times(first_run):
    out, output = first_run
    report = json.loads((out / "report.json").read_text())
    counts = json.loads((out / "corpus" / "corpus_counts.json").read_text())
    assert report["corpus_funnel"] == {**counts, "segments_augmented": 12}
    backward = report["backward_model"]
    candidates = [json.loads(line) for line in (out / "augment" / "candidates.jsonl").read_text().splitlines()]
    assert backward["instructions"] == len(candidates) == 12 and backward["segments"] == 12
    # Five examples spread over the pool (first, last and between), each beside its segment's first line.
    picks = [candidates[i] for i in (0, 3, 6, 8, 11)]
    assert backward["examples"] == [
        {"segment": pipeline.first_line(row["output"]), "instruction": row["instruction"]} for row in picks
    ]
    stages = ["corpus", "myx", "augment", "magpie", "m0", "m1", "m2"]
    assert list(report["stage_seconds"]) == ["models (resolve / convert)", *stages]
    assert all(report["stage_seconds"][stage] > 0 for stage in stages)
    assert all(f"[humpback] {stage} finished in " in output for stage in stages)
    markdown = (out / "report.md").read_text()
    for heading in ("## Corpus funnel", "## Backward model output", "## Wall time per stage", "Top-scored pairs"):
        assert heading in markdown
    assert f"| removed_too_long | {counts['removed_too_long']} |" in markdown


def test_model_overrides_are_in_every_stage_command_and_hash(recipes, tmp_path):
    base = run_script.make_parser().parse_args_and_config(["--config", str(recipes / "loop.yaml")])[0]
    base.output_dir, base.model = str(tmp_path), None
    split = pipeline.LoopArguments(**{**vars(base), "model": "fwd", "backward_model": "bwd", "magpie_model": "chat"})
    models = {stage.name: pipeline.stage_model(stage) for stage in pipeline.plan(recipes, split)}
    assert models == {
        "corpus": None, "myx": "bwd", "augment": "bwd", "magpie": "chat", "m0": "fwd", "m1": "fwd", "m2": "fwd"
    }  # fmt: skip
    # Without overrides each stage loads its recipe's model (augment: the base its adapter names).
    plain = {stage.name: pipeline.stage_model(stage) for stage in pipeline.plan(recipes, base)}
    assert plain["myx"] == plain["m0"] == plain["magpie"] == "builtin:smollm2-135m-instruct"
    assert plain["augment"] is None

    def hashes(loop):
        found = {}
        for stage in pipeline.plan(recipes, loop):
            found[stage.name] = pipeline.stage_hash(stage, loop, [found[name] for name in stage.upstream])
        return found

    other = pipeline.LoopArguments(**{**vars(split), "backward_model": "bwd2"})
    changed = {name for name, digest in hashes(other).items() if hashes(split)[name] != digest}
    assert changed == {"myx", "augment", "m0", "m1", "m2"}  # the backward model and everything downstream of it


def test_rerun_skips_every_finished_stage(recipes, first_run):
    out, _ = first_run
    output = finish(humpback_run(recipes, out))
    assert set(statuses(output).values()) == {"up to date"}


def test_kill_and_resume_ends_with_the_same_report(recipes, first_run, tmp_path):
    out = tmp_path / "killed"
    process = humpback_run(recipes, out, start_new_session=True)
    marker = out / pipeline.MARKERS / "m0.json"
    deadline = time.monotonic() + 300
    while not (marker.is_file() and json.loads(marker.read_text())["status"] == "started"):
        assert time.monotonic() < deadline and process.poll() is None, "the loop never reached m0"
        time.sleep(0.2)
    time.sleep(3)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "report.json").exists()
    output = finish(humpback_run(recipes, out))
    assert statuses(output) == {
        "corpus": "up to date",
        "myx": "up to date",
        "augment": "up to date",
        "magpie": "up to date",
        "m0": "resuming",
        "m1": "running",
        "m2": "running",
    }
    # The same data and report, except how long each stage took.
    expected = json.loads((first_run[0] / "report.json").read_text().replace(str(first_run[0]), "OUT"))
    resumed = json.loads((out / "report.json").read_text().replace(str(out), "OUT"))
    assert expected.pop("stage_seconds").keys() == resumed.pop("stage_seconds").keys()
    assert resumed == expected


def test_from_forces_a_restart_of_that_stage_and_its_dependents(recipes, first_run):
    out, _ = first_run
    output = finish(humpback_run(recipes, out, "--from", "augment"))
    # MAGPIE comes after augment in the list but does not depend on it.
    assert statuses(output) == {
        **dict.fromkeys(["corpus", "myx", "magpie"], "up to date"),
        **dict.fromkeys(["augment", "m0", "m1", "m2"], "running"),
    }
    with pytest.raises(ValueError, match="not a stage"):
        run_script.run([str(recipes), "--output_dir", str(out), "--from", "m9"])


def test_changed_recipe_reruns_that_stage_and_downstream(recipes, first_run):
    out, _ = first_run
    original = (recipes / "seed.yaml").read_text()
    (recipes / "seed.yaml").write_text(yaml.safe_dump({**yaml.safe_load(original), "max_steps": 2}))
    try:
        output = finish(humpback_run(recipes, out))
    finally:
        (recipes / "seed.yaml").write_text(original)  # the module's recipes stay as the other tests expect
    assert statuses(output) == {
        **dict.fromkeys(["corpus", "myx", "augment", "magpie"], "up to date"),
        **dict.fromkeys(["m0", "m1", "m2"], "running"),
    }
    state = json.loads((out / "m0" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and not (out / "m0" / "checkpoint-3").exists()
