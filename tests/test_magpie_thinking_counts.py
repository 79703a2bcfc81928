"""MAGPIE's `thinking` counts (issue 23, item 5) sit at the top level of its report, as every stage's, when it curates
its pairs too: the nested curation, which generates nothing, must not take them. vLLM is the scripted engine of
tests/test_thinking_counts.py, answering every prompt with a thinking block and one instruction."""

import json

from test_thinking_counts import INSTRUCTION, THOUGHT, qwen3, qwen3_dir, scripted_vllm  # noqa: F401 (fixtures)

from humpback_trl.scripts import magpie as magpie_script


def test_curated_magpie_reports_its_thinking_counts_at_the_top_level(qwen3_dir, scripted_vllm, tmp_path):  # noqa: F811
    scripted_vllm.text = THOUGHT + INSTRUCTION
    out = tmp_path / "magpie"
    magpie_script.run(
        ["--model_name_or_path", str(qwen3_dir), "--output_dir", str(out), "--engine", "vllm",
         "--num_samples", "3", "--num_turns", "1", "--shard_size", "3", "--curate", "true",
         "--curation_engine", "transformers", "--calibration_dev_set", "none"]
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    # Three instructions and three responses, each written with a thinking block.
    assert report["thinking"] == {"generated": 6, "stripped": 6}
    assert report["kept"] == 1 and report["iterations"][0]["candidates"] == 1  # the same instruction three times
    assert "thinking" not in json.loads((out / "curation" / "report.json").read_text())
    assert "Thinking text stripped from 6 of 6 texts the model generated" in (out / "report.md").read_text()
