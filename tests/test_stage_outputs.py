"""Every stage writes the files its declaration names (stage_outputs.py), and the loop report is built from them."""

import json

from datasets import Dataset
from loop_runs import STAGES

from humpback_trl import pipeline
from humpback_trl.augment import AugmentArguments, candidate_outputs
from humpback_trl.modeling import InferenceModelArguments
from humpback_trl.scripts import run as run_script
from humpback_trl.stage import write_outputs
from humpback_trl.stage_outputs import AUGMENT, REPORT, REPORT_MARKDOWN, CurateOutputs, TrainingOutputs


def shared_loop(recipes, out) -> pipeline.LoopArguments:
    loop = run_script.make_parser().parse_args_and_config(["--config", str(recipes / "loop.yaml")])[0]
    return pipeline.LoopArguments(**{**vars(loop), "output_dir": str(out)})


def test_every_stage_of_the_run_writes_what_it_declares(first_run, loop_recipes):
    out = first_run[0]
    loop = shared_loop(loop_recipes, out)
    stages = pipeline.plan(loop_recipes, loop)
    assert [stage.name for stage in stages] == STAGES
    for stage in stages:
        folder = out / stage.name
        assert [name for name in stage.outputs.files() if not (folder / name).exists()] == [], stage.name
        if stage.outputs.report:
            stage.outputs.read_report(folder)  # a declared field the stage did not write is a KeyError
    # The loop report, built again from the declarations alone, is the one the run wrote (but the plumbing line and
    # the model-resolution time, which the run adds).
    written = json.loads((out / REPORT).read_text())
    rebuilt = json.loads(json.dumps(pipeline.loop_report(loop, stages)))
    assert {key: written[key] for key in rebuilt if key != "stage_seconds"} == {
        key: value for key, value in rebuilt.items() if key != "stage_seconds"
    }
    assert list(written) == ["plumbing", *rebuilt]


def test_the_report_of_a_declaration_holds_only_the_fields_the_loop_reads(tmp_path):
    (tmp_path / REPORT).write_text(json.dumps({"candidates": 3, "iterations": [{"iteration": 1}]}))
    assert CurateOutputs().read_report(tmp_path) == {"iterations": [{"iteration": 1}]}
    assert TrainingOutputs().files() == ["training_data.jsonl"]
    assert CurateOutputs().files() == [
        REPORT, "scored.jsonl", "a4.jsonl", "a5.jsonl", "random.jsonl", "passed.jsonl", "curated"
    ]  # fmt: skip


def test_a_stage_writes_its_files_under_the_declared_names(tmp_path):
    candidates = Dataset.from_dict({"instruction": ["i"], "output": ["o"], "source": ["augmented"], "source_id": ["1"]})
    model = InferenceModelArguments(adapter="m")
    outputs = candidate_outputs(candidates, AugmentArguments(corpus="c"), model, {"segments": 1})
    write_outputs(outputs, tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([*AUGMENT.files(), REPORT_MARKDOWN, "README.md"])
    assert AUGMENT.read_report(tmp_path) == {"candidates": 1, "segments": 1}
