"""`humpback demo`, the README's first command: its arguments, and a whole run on the tiny model (its output folder,
report and printed summary)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from humpback_trl import pipeline
from humpback_trl.scripts import demo

ROOT = Path(__file__).resolve().parents[1]
ONE_ITERATION = ["corpus", "myx", "augment", "m0", "curate-1", "m1", "eval"]


@pytest.mark.parametrize("spelling", ["--output_dir", "--output-dir"])
def test_arguments_become_the_loop_of_the_quickstart_recipes(tmp_path, monkeypatch, capsys, spelling):
    ran = []
    report = {"artifacts": {"M1": str(tmp_path / "m1")}}
    monkeypatch.setattr(pipeline, "run_loop", lambda folder, loop, start: ran.append((folder, loop, start)) or report)
    argv = [spelling, str(tmp_path), "--iterations", "1", "--magpie", "seed", "--model", "builtin:tiny-llama"]
    assert demo.run([*argv, "--from", "m0"]) is report
    [(folder, loop, start)] = ran
    assert (folder, start) == (ROOT / "recipes" / "quickstart", "m0")
    assert (loop.output_dir, loop.iterations, loop.magpie) == (str(tmp_path), 1, "seed")
    assert loop.model == "builtin:tiny-llama"
    assert Path(loop.accelerate_config) == ROOT / "accelerate_configs" / "cpu.yaml"
    assert (loop.preference, loop.evaluate, loop.push_to_hub) == ("none", True, False)
    printed = capsys.readouterr().out
    assert f"  M1                   {tmp_path / 'm1'}\n" in printed and printed.rstrip().endswith(demo.TINY_NOTE)


def test_defaults_and_refused_values(capsys):
    args = demo.argument_parser().parse_args([])
    assert (args.output_dir, args.iterations, args.magpie, args.model, args.start_from) == (
        "outputs/demo", 2, "none", None, None
    )  # fmt: skip
    with pytest.raises(SystemExit):
        demo.argument_parser().parse_args(["--magpie", "all"])
    assert "invalid choice: 'all'" in capsys.readouterr().err


def test_demo_on_the_tiny_model_writes_the_report_and_prints_the_summary(tmp_path):
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "humpback_trl.cli", "demo", "--output_dir", str(out), "--iterations", "1",
               "--model", "builtin:tiny-llama"]  # fmt: skip
    result = subprocess.run(
        command, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert list(report["stage_seconds"]) == ["models (resolve / convert)", *ONE_ITERATION]
    assert [it["iteration"] for it in report["iterations"]] == [1]
    assert [row["model"] for row in report["evaluation"]["table"]] == ["M1"]
    for stage in ONE_ITERATION:
        assert json.loads((out / pipeline.MARKERS / f"{stage}.json").read_text())["status"] == "done", stage
    for stage in ("myx", "m0", "m1"):
        assert (out / stage / "adapter_model.safetensors").is_file(), stage
    assert {"report.md", "report.json", "scores.png"} <= {path.name for path in out.iterdir()}
    printed = result.stdout
    assert "Artifacts:" in printed and f"  {'report':<20} {out / 'report.md'} (+ report.json, scores.png)" in printed
    assert f"  {'M1':<20} {out / 'm1'}" in printed
    assert "[humpback] demo finished in " in printed and printed.rstrip().endswith(demo.TINY_NOTE)
