"""The whole loop on CPU: a consistent report, skipping finished stages, kill -9 and resume, --from, reruns of
stages whose recipe changed (and only those), publishing a finished run without redoing it, the output-folder lock."""

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import yaml
from loop_runs import ROOT, STAGES, copy_of_run, finish, humpback_run, statuses

from humpback_trl import pipeline
from humpback_trl.scripts import run as run_script
from humpback_trl.training import last_checkpoint


def test_loop_report_is_consistent(first_run):
    out, output = first_run
    assert statuses(output) == dict.fromkeys(STAGES, "running")
    assert "accelerate launch --config_file" in output and "-m humpback_trl.scripts.augment" in output
    report = json.loads((out / "report.json").read_text())
    # The tiny model writes the instructions: a plumbing model, named first in the report and once in the output.
    plumbing = (
        "builtin:tiny-llama is a plumbing model (random weights, so the text is noise and the judges are at chance); "
        "the curate stages run with --instruction_checks none, so every stage carries data"
    )
    assert list(report)[0] == "plumbing" and report["plumbing"] == plumbing
    assert output.count(f"[humpback] {plumbing}\n") == 1
    assert report["seed"] == 181 and report["documents"] == 79 and report["candidates"] == 12
    assert [it["iteration"] for it in report["iterations"]] == [1, 2]
    magpie = [json.loads(line) for line in (out / "magpie" / "magpie.jsonl").read_text().splitlines()]
    assert report["magpie_pairs"] == len(magpie) > 0 and {row["source"] for row in magpie} == {"magpie"}
    for it, scorer in zip(report["iterations"], ["m0", "m1"], strict=True):
        # MAGPIE pairs join the backtranslation candidates and are curated with them.
        assert it["a5"] <= it["a4"] <= it["candidates"] == report["candidates"] + len(magpie)
        # Likelihood mode (the quickstart's): every candidate is scored, unparsed or rejected by the checks.
        assert sum(it["histogram"]["counts"]) + it["unparsed"] + it["rejected_by_checks"] == it["candidates"]
        assert Path(it["scorer"]).name == scorer
        assert it["training_pairs"] == report["seed"] + it["a5"]
        top = [pair["score"] for pair in it["top_pairs"]]
        assert len(top) == 3 and top == sorted(top, reverse=True)
    assert {"report.md", "scores.png"} <= {p.name for p in out.iterdir()}
    assert "## Iteration 2" in (out / "report.md").read_text() and "Artifacts:" in output
    for stage in ("myx", "m0", "m1", "m2", "m2-dpo"):
        assert (out / stage / "adapter_model.safetensors").is_file()
    # Curation has its own stages: the training folders hold no scores.
    assert not any((out / stage / "curation").exists() for stage in ("m0", "m1", "m2"))
    assert report["preferences"] == json.loads((out / "preferences" / "report.json").read_text())
    evaluation = json.loads((out / "eval" / "report.json").read_text())
    assert report["evaluation"] == evaluation
    # The shared run has no ablation: its report says the curated data was not compared with random selection.
    line = report["curation vs random selection"]
    assert line.startswith("not measured (ablation: none in loop.yaml); `ablation: random` with `evaluate: true`")
    assert line in (out / "report.md").read_text()
    # Every later model against M0, the first one compared.
    assert evaluation["reference"] == "M0"
    assert [row["model"] for row in evaluation["table"]] == ["M1", "M2", "M2-dpo"]


def test_preference_stage_continues_the_last_model_on_its_scores(first_run):
    out, output = first_run
    assert f"--kind dpo --adapter {out / 'm2'} --instructions {out / 'curate-2' / 'scored.jsonl'}" in output
    pairs = [json.loads(line) for line in (out / "preferences" / "dpo.jsonl").read_text().splitlines()]
    report = json.loads((out / "preferences" / "report.json").read_text())
    assert report["pairs_kept"] == len(pairs)
    config = json.loads((out / "m2-dpo" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "builtin:tiny-llama"  # portable: no cache path


def test_every_stage_ran_on_the_overriding_model(first_run):
    out, output = first_run
    for stage in ("myx", "m0", "m1", "m2"):
        config = json.loads((out / stage / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "builtin:tiny-llama", stage  # portable: no cache path
    # myx, augment, magpie, m0, curate-1, m1, curate-2, m2, preferences, m2-dpo
    assert output.count("--model_name_or_path builtin:tiny-llama") == 10


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
    assert list(report["stage_seconds"]) == ["models (resolve / convert)", *STAGES]
    assert all(report["stage_seconds"][stage] > 0 for stage in STAGES)
    assert all(f"[humpback] {stage} finished in " in output for stage in STAGES)
    markdown = (out / "report.md").read_text()
    for heading in ("## Corpus funnel", "## Backward model output", "## Wall time per stage", "Top-scored pairs"):
        assert heading in markdown
    assert f"| removed_too_long | {counts['removed_too_long']} |" in markdown


def test_model_overrides_are_in_every_stage_command_and_hash(loop_recipes, tmp_path):
    base = run_script.make_parser().parse_args_and_config(["--config", str(loop_recipes / "loop.yaml")])[0]
    base.output_dir, base.model = str(tmp_path), None
    split = pipeline.LoopArguments(**{**vars(base), "model": "fwd", "backward_model": "bwd", "magpie_model": "chat"})
    models = {stage.name: pipeline.stage_model(stage) for stage in pipeline.plan(loop_recipes, split)}
    assert models == {
        "corpus": None, "myx": "bwd", "augment": "bwd", "magpie": "chat", "m0": "fwd", "curate-1": "fwd", "m1": "fwd",
        "curate-2": "fwd", "m2": "fwd", "preferences": "fwd", "m2-dpo": "fwd", "eval": None,
    }  # fmt: skip
    # Without overrides each stage loads its recipe's model (augment: the base its adapter names).
    plain = {stage.name: pipeline.stage_model(stage) for stage in pipeline.plan(loop_recipes, base)}
    assert plain["myx"] == plain["m0"] == plain["magpie"] == "builtin:smollm2-135m-instruct"
    assert plain["augment"] is None

    other = pipeline.LoopArguments(**{**vars(split), "backward_model": "bwd2"})
    changed = {
        name for name, digest in hashes(loop_recipes, other).items() if hashes(loop_recipes, split)[name] != digest
    }
    # The backward model and everything downstream of it; M0 trains on the seed alone and stays.
    assert changed == {"myx", "augment", "curate-1", "m1", "curate-2", "m2", "preferences", "m2-dpo", "eval"}


def hashes(recipes, loop):
    config = pipeline.find_accelerate_config(loop.accelerate_config, recipes)
    found = {}
    for stage in pipeline.plan(recipes, loop):
        found[stage.name] = pipeline.stage_hash(stage, loop, config, [found[name] for name in stage.upstream], {})
    return found


def loop_arguments(recipes, out, **changes):
    loop = run_script.make_parser().parse_args_and_config(["--config", str(recipes / "loop.yaml")])[0]
    return pipeline.LoopArguments(**{**vars(loop), "output_dir": str(out), **changes})


def test_hash_ignores_comments_key_order_hub_logging_and_process_count(loop_recipes, tmp_path):
    loop = loop_arguments(loop_recipes, tmp_path / "out")
    before = hashes(loop_recipes, loop)
    edited = tmp_path / "recipes"
    edited.mkdir()
    for recipe in loop_recipes.iterdir():
        config = yaml.safe_load(recipe.read_text())
        if recipe.name == "seed.yaml":
            config = {**dict(reversed(config.items())), "logging_steps": 1, "report_to": "tensorboard"}
            config |= {"hub_private_repo": True, "push_to_hub": True}
        (edited / recipe.name).write_text("# a comment\n" + yaml.safe_dump(config, sort_keys=False))
    published = pipeline.LoopArguments(
        **{**vars(loop), "push_to_hub": True, "hub_prefix": "org/run", "num_processes": 4}
    )
    assert hashes(edited, published) == before
    # The same output folder reached by an absolute or a relative path hashes alike.
    relative = pipeline.LoopArguments(**{**vars(loop), "output_dir": os.path.relpath(tmp_path / "out")})
    assert hashes(loop_recipes, relative) == before
    # A value that changes the result does change the hash, of that stage and what depends on it.
    config = yaml.safe_load((loop_recipes / "curate.yaml").read_text())
    (edited / "curate.yaml").write_text(yaml.safe_dump({**config, "curation_mode": "generate"}))
    changed = {name for name, digest in hashes(edited, loop).items() if before[name] != digest}
    assert changed == {"curate-1", "m1", "curate-2", "m2", "preferences", "m2-dpo", "eval"}


def test_local_inputs_are_hashed_by_content(loop_recipes, tmp_path):
    seed = tmp_path / "seed.jsonl"
    seed.write_text('{"instruction": "a", "output": "b"}\n')
    folder = tmp_path / "recipes"
    folder.mkdir()
    for recipe in loop_recipes.iterdir():
        (folder / recipe.name).write_text(recipe.read_text())
    config = yaml.safe_load((loop_recipes / "seed.yaml").read_text())
    (folder / "seed.yaml").write_text(yaml.safe_dump({**config, "data": [str(seed)]}))
    loop = loop_arguments(folder, tmp_path / "out")
    before = hashes(folder, loop)
    os.utime(seed, (0, 0))  # touched, same content: nothing to redo
    assert hashes(folder, loop) == before
    seed.write_text('{"instruction": "a", "output": "c"}\n')
    assert hashes(folder, loop)["m0"] != before["m0"]


def test_accelerate_config_is_found_from_any_working_directory(loop_recipes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    found = pipeline.find_accelerate_config("accelerate_configs/cpu.yaml", loop_recipes)
    assert found == (ROOT / "accelerate_configs" / "cpu.yaml").resolve()
    with pytest.raises(FileNotFoundError, match="accelerate_config 'nope.yaml' not found"):
        pipeline.find_accelerate_config("nope.yaml", loop_recipes)


def test_rerun_skips_every_finished_stage(loop_recipes, first_run):
    out, _ = first_run
    output = finish(humpback_run(loop_recipes, out))
    assert set(statuses(output).values()) == {"up to date"}


def test_publishing_a_finished_run_pushes_every_stage_without_redoing_it(
    loop_recipes, first_run, tmp_path, monkeypatch
):
    out = copy_of_run(first_run[0], tmp_path / "published")
    commands = []
    monkeypatch.setattr(pipeline, "run_stage_process", lambda command: commands.append(command) or 0)
    markers = {path.name: json.loads(path.read_text()) for path in (out / pipeline.MARKERS).glob("*.json")}
    loop = loop_arguments(loop_recipes, out, push_to_hub=True, hub_prefix="org/run")
    pipeline.run_loop(loop_recipes, loop)
    # Each stage that pushes reruns its own command once with the hub flags: it resumes from its final checkpoint or
    # finished shards, so nothing trains or scores again; corpus and eval push nothing and are skipped.
    ran = [next(arg for arg in command if arg.startswith("humpback_trl.scripts."))[21:] for command in commands]
    assert ran == ["sft", "augment", "magpie", "sft", "curate", "sft", "curate", "sft", "preferences", "dpo"]
    assert all(command[-4:] == ["--hub_prefix", "org/run", "--push_to_hub", "true"] for command in commands)
    for name, marker in markers.items():
        after = json.loads((out / pipeline.MARKERS / name).read_text())
        assert after["hash"] == marker["hash"] and after["seconds"] == marker["seconds"], name
    commands.clear()
    pipeline.run_loop(loop_recipes, loop)  # already published to this prefix
    assert commands == []


def test_a_second_run_on_a_locked_folder_fails_at_once(loop_recipes, tmp_path):
    out = tmp_path / "locked"
    with pipeline.locked(out):
        start = time.monotonic()
        process = humpback_run(loop_recipes, out)
        output, _ = process.communicate(timeout=120)
        assert time.monotonic() - start < 30
    assert process.returncode == 2
    assert (
        output.strip()
        .splitlines()[-1]
        .endswith(
            f"{out} is being written by another humpback run (pid {os.getpid()}); wait for it to finish, stop it, "
            "or choose another --output_dir"
        )
    )
    assert not (out / pipeline.MARKERS).exists()


# The rerun tests stop the loop at M1 (`--iterations 1`, no preference or eval stage): the hashes of the stages up to
# M1 do not depend on how many follow, and the first run already covered the rest.
SHORT = ["--iterations", "1", "--preference", "none", "--evaluate", "false"]


def test_kill_and_resume_ends_with_the_same_report(loop_recipes, first_run, tmp_path):
    out = tmp_path / "killed"
    (out / pipeline.MARKERS).mkdir(parents=True)
    # The stages before M0 are copied from the first run (with their markers): they are up to date here too.
    for stage in ("corpus", "myx", "augment", "magpie"):
        shutil.copytree(first_run[0] / stage, out / stage)
        shutil.copy(first_run[0] / pipeline.MARKERS / f"{stage}.json", out / pipeline.MARKERS / f"{stage}.json")
    process = humpback_run(loop_recipes, out, *SHORT, start_new_session=True)
    deadline = time.monotonic() + 300
    while last_checkpoint(out / "m0") is None:  # M0 mid-training: a checkpoint saved, its adapter not yet
        assert time.monotonic() < deadline and process.poll() is None, "the loop never saved an M0 checkpoint"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    at_kill = last_checkpoint(out / "m0")
    assert not (out / "m0" / "adapter_model.safetensors").exists(), "killed after M0 finished: nothing to resume"
    assert not (out / "report.json").exists()
    output = finish(humpback_run(loop_recipes, out, *SHORT))
    # M0 resumed from the checkpoint the kill left (the SFT script names it), not from scratch.
    assert f"Resuming from {at_kill}\n" in output
    assert statuses(output) == {
        **dict.fromkeys(["corpus", "myx", "augment", "magpie"], "up to date"),
        "m0": "resuming",
        "curate-1": "running",
        "m1": "running",
    }
    # The same data and report as the first run's, up to M1, except how long each stage took.
    # Reports name a model outside the working directory by its last two parts (paths.public_name): `out/m0`.
    expected = json.loads(
        (first_run[0] / "report.json")
        .read_text()
        .replace(str(first_run[0]), "OUT")
        .replace(f'"{first_run[0].name}/', '"OUT/')
    )
    resumed = json.loads((out / "report.json").read_text().replace(str(out), "OUT").replace(f'"{out.name}/', '"OUT/'))
    assert resumed["iterations"] == expected["iterations"][:1]
    for key in ("seed", "documents", "segments", "candidates", "magpie_pairs", "corpus_funnel", "backward_model"):
        assert resumed[key] == expected[key], key
    assert list(resumed["stage_seconds"]) == ["models (resolve / convert)", *STAGES[:7]]


def test_from_forces_a_restart_of_that_stage_and_its_dependents(loop_recipes, first_run, tmp_path):
    out = copy_of_run(first_run[0], tmp_path / "out")
    output = finish(humpback_run(loop_recipes, out, *SHORT, "--from", "augment"))
    # MAGPIE comes after augment in the list but does not depend on it, and M0 trains on the seed alone.
    assert statuses(output) == {
        **dict.fromkeys(["corpus", "myx", "magpie", "m0"], "up to date"),
        **dict.fromkeys(["augment", "curate-1", "m1"], "running"),
    }
    with pytest.raises(ValueError, match="not a stage"):
        run_script.run([str(loop_recipes), "--output_dir", str(out), "--from", "m9"])


def test_changed_recipe_reruns_that_stage_and_downstream_keeping_the_old_output(loop_recipes, first_run, tmp_path):
    out = copy_of_run(first_run[0], tmp_path / "out")
    recipes = shutil.copytree(loop_recipes, tmp_path / "recipes")
    original = (recipes / "seed.yaml").read_text()
    (recipes / "seed.yaml").write_text(
        "# only a comment and the key order differ\n" + yaml.safe_dump(dict(reversed(yaml.safe_load(original).items())))
    )
    assert set(statuses(finish(humpback_run(recipes, out, *SHORT))).values()) == {"up to date"}
    (recipes / "seed.yaml").write_text(yaml.safe_dump({**yaml.safe_load(original), "max_steps": 2}))
    output = finish(humpback_run(recipes, out, *SHORT))
    assert statuses(output) == {
        **dict.fromkeys(["corpus", "myx", "augment", "magpie"], "up to date"),
        **dict.fromkeys(["m0", "curate-1", "m1"], "running"),
    }
    state = json.loads((out / "m0" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and not (out / "m0" / "checkpoint-3").exists()
    # The first M0 is moved aside, not deleted.
    (old,) = out.glob("m0.old-*")
    assert (old / "checkpoint-3").is_dir() and (old / "adapter_model.safetensors").is_file()
    assert f"[humpback] m0: its inputs changed; the previous output is kept in {old}" in output
