"""No pushed file names a local path (issue 23: `grep -r "$HOME" OUTPUT_DIR` finds none): every card, report and
pushed row names a model, an adapter or a data file by `paths.public_name`."""

import json
from pathlib import Path

import pytest
from loop_runs import copy_of_run, finish, humpback_run

from humpback_trl.builtin_models import resolve_model
from humpback_trl.paths import public_name
from humpback_trl.tiny import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]


def test_a_built_in_model_folder_is_named_by_its_built_in_name():
    assert public_name(resolve_model(TINY_MODEL)) == TINY_MODEL


@pytest.mark.parametrize(
    "name", ["Qwen/Qwen2.5-7B-Instruct", "gpt2", "builtin:smollm2-135m-instruct", "outputs/quickstart/m0", "./m0"]
)
def test_hub_ids_built_in_names_and_relative_paths_are_kept(name):
    assert public_name(name) == name


def test_an_absolute_path_is_relative_to_the_working_directory_else_named_by_its_last_two_parts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert public_name(str(tmp_path / "outputs" / "quickstart" / "m0")) == "outputs/quickstart/m0"
    assert public_name("/scratch/alice/runs/demo/m0") == "demo/m0"
    monkeypatch.setenv("HOME", "/home/alice")
    assert public_name("~/runs/demo/a5.jsonl") == "demo/a5.jsonl"


def local_prefixes(tmp_path_factory) -> list[str]:
    """Where the local paths of a loop test lie: the session's temporary folder (the run, its recipes and the model
    cache: conftest points HUMPBACK_CACHE there) and this checkout."""
    return [str(tmp_path_factory.getbasetemp()), f"{ROOT}/"]


def leaking(prefixes: list[str], out: Path, files: list[Path]) -> list[str]:
    """The `files` that hold a local path; the .jsonl writer escapes every '/' as '\\/', so both spellings."""
    spellings = [spelling for prefix in prefixes for spelling in (prefix, prefix.replace("/", "\\/"))]
    return [
        str(path.relative_to(out))
        for path in sorted(set(files))
        if any(spelling in path.read_text(encoding="utf-8", errors="replace") for spelling in spellings)
    ]


SKIPPED = ("_", "checkpoint-")  # what Trainer.push_to_hub leaves out of a trained model's folder


def pushed_files(out: Path) -> list[Path]:
    """What the stages push, as humpback_trl/training.py, hub.py and stage.py push it: a trained model its whole
    folder but `_*` and `checkpoint-*` (transformers' Trainer.push_to_hub), a data stage its card (README.md) and
    its rows (the .jsonl files beside it)."""
    files = []
    for card in out.rglob("README.md"):
        folder = card.parent
        if any(part.startswith(SKIPPED) for part in folder.relative_to(out).parts):
            continue
        if (folder / "adapter_config.json").is_file():
            files += [
                path for path in folder.rglob("*")
                if path.is_file() and not path.relative_to(folder).parts[0].startswith(SKIPPED)
            ]  # fmt: skip
        else:
            files += [card, *folder.glob("*.jsonl")]
    return files


def test_no_pushed_file_and_no_report_names_a_local_path(first_run, tmp_path_factory):
    """The shared loop run (tests/loop_runs.py: MAGPIE pairs with the candidates, two iterations, DPO, the eval)."""
    out = first_run[0]
    pushed = pushed_files(out)
    reports = [*out.rglob("report.json"), *out.rglob("report.md")]
    assert leaking(local_prefixes(tmp_path_factory), out, [*pushed, *reports]) == []
    names = {str(path.relative_to(out)) for path in pushed}
    stages = ("myx", "augment", "magpie", "m0", "curate-1", "m1", "curate-2", "m2", "preferences", "m2-dpo")
    assert {f"{stage}/README.md" for stage in stages} <= names
    assert {"curate-1/scored.jsonl", "m1/training_data.jsonl", "m2-dpo/adapter_config.json"} <= names


def test_a_stage_of_the_run_is_named_by_the_run_folder_and_the_stage(first_run):
    """The run lies outside the working directory (the checkout): its stages by their last two path parts."""
    out = first_run[0]
    run = out.name
    curation = json.loads((out / "curate-1" / "report.json").read_text())["iterations"][0]
    assert curation["scorer"] == f"{run}/m0"
    rows = [json.loads(line) for line in (out / "curate-1" / "scored.jsonl").read_text().splitlines()]
    assert {row["scorer"] for row in rows} == {f"{run}/m0"}
    assert json.loads((out / "augment" / "report.json").read_text())["writer"] == f"{run}/myx"
    evaluation = json.loads((out / "eval" / "report.json").read_text())
    assert evaluation["judge"] == TINY_MODEL
    assert evaluation["models"] == {name.upper(): f"{run}/{name}" for name in ("m0", "m1", "m2")} | {
        "M2-dpo": f"{run}/m2-dpo"
    }
    assert evaluation["model_outputs"]["M0"] == "model_outputs/M0.json"
    assert json.loads((out / "report.json").read_text())["artifacts"]["M1"] == "m1"


def test_rewrite_and_grpo_name_no_local_path(first_run, loop_recipes, tmp_path_factory, tmp_path):
    """The rewrite and a GRPO adapter (its grpo_report.json and training_args.bin are pushed with it), on a copy of
    the shared run: only rewrite-1, M1, M1-GRPO and the eval run."""
    out = copy_of_run(first_run[0], tmp_path / "out")
    finish(
        humpback_run(loop_recipes, out, "--model", TINY_MODEL, "--iterations", "1", "--rewrite", "replace",
                     "--rewrite_model", TINY_MODEL, "--preference", "grpo")
    )  # fmt: skip
    pushed = [path for path in pushed_files(out) if path.parts[len(out.parts)] in ("rewrite-1", "m1", "m1-grpo")]
    names = {str(path.relative_to(out)) for path in pushed}
    assert {"rewrite-1/rewritten.jsonl", "m1-grpo/grpo_report.json", "m1-grpo/training_args.bin"} <= names
    reports = [out / "rewrite-1" / "report.json", out / "eval" / "report.json", out / "report.json"]
    assert leaking(local_prefixes(tmp_path_factory), out, [*pushed, *reports]) == []
