"""`humpback calibrate`: how well does a scorer's rubric score separate good answers from bad ones?

    humpback calibrate --scorer outputs/quickstart/m0 outputs/quickstart/m1 --dev builtin:dev --output_dir out/cal
    humpback calibrate --scorer MODEL --prompt_styles verbatim score-only
    humpback calibrate --scorer MODEL --dev oasst_export.jsonl --dev_format oasst --save_dev oasst_dev.jsonl

Each scorer (adapter folder, model folder or Hub id) scores the labelled dev set with the curation settings
(mode, prompt, thresholds, digit-mass floor); OUTPUT_DIR/calibration.json holds the first scorer's `auc`,
`auc_by_kind`, `precision` / `recall` per threshold and `scorer`, and every (scorer, prompt) row under `scorers`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset
from trl import TrlParser

from humpback_trl.calibration import (
    BUNDLED_DEV_SET,
    calibration_markdown,
    calibration_metrics,
    load_dev_set,
    load_oasst_dev_set,
)
from humpback_trl.curation import CurationSettings, score_rows
from humpback_trl.logs import configure_logging
from humpback_trl.model_specs import model_arguments, release_memory
from humpback_trl.modeling import load_model
from humpback_trl.scoring import PROMPT_STYLES

DEV_FORMATS = ("labelled", "oasst")


@dataclass
class CalibrateArguments:
    scorer: list[str] = field(
        default_factory=list,
        metadata={"help": "Scoring models: adapter folders (M0, M1, ...), model folders, Hub ids."},
    )
    dev: str = field(default=BUNDLED_DEV_SET, metadata={"help": "Dev set: builtin:dev, a file or a Hub id."})
    dev_split: str = field(default="train", metadata={"help": "Split of a Hub dev set (oasst1: validation)."})
    dev_format: str = field(
        default="labelled",
        metadata={"help": "labelled (instruction, output, label[, kind]) | oasst (an oasst1 message export)."},
    )
    oasst_limit: int | None = field(default=None, metadata={"help": "With dev_format oasst: at most N prompts."})
    save_dev: str | None = field(default=None, metadata={"help": "Also write the dev set used to this jsonl file."})
    prompt_styles: list[str] = field(
        default_factory=list,
        metadata={"help": "Score with each of these rubric variants (verbatim, score-only); default curation_prompt."},
    )
    output_dir: str | None = field(default=None, metadata={"help": "Write calibration.json / .md and scores.jsonl."})
    dtype: str = field(
        default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU), bfloat16, float16 or float32."}
    )
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the scorer in 4-bit nf4 (bitsandbytes)."})

    def __post_init__(self) -> None:
        self.scorer = [self.scorer] if isinstance(self.scorer, str) else list(self.scorer)
        if not self.scorer:
            raise ValueError("humpback calibrate needs --scorer (an adapter folder, model folder or Hub id)")
        if self.dev_format not in DEV_FORMATS:
            raise ValueError(f"dev_format must be one of {DEV_FORMATS}, got {self.dev_format!r}")
        unknown = [style for style in self.prompt_styles if style not in PROMPT_STYLES]
        if unknown:
            raise ValueError(f"prompt_styles: {unknown} not among {PROMPT_STYLES}")


def calibrate(args: CalibrateArguments, settings: CurationSettings) -> dict[str, Any]:
    if args.dev_format == "oasst":
        dev = load_oasst_dev_set(args.dev, split=args.dev_split, limit=args.oasst_limit)
    else:
        dev = load_dev_set(args.dev, split=args.dev_split)
    if args.save_dev:
        dev.to_json(args.save_dev, lines=True, force_ascii=False)
    pairs = list(zip(dev["instruction"], dev["output"], strict=True))
    styles = args.prompt_styles or [settings.curation_prompt]
    scorers, scores, masses = [], {}, {}
    for name in args.scorer:
        model, tokenizer = load_model(model_arguments(name, args.dtype, args.load_in_4bit))
        for style in styles:
            styled = dataclasses.replace(settings, curation_prompt=style)
            label = f"{name} [{style}]" if len(styles) > 1 else name
            results = score_rows(model, tokenizer, pairs, styled, show_progress=True)
            scores[label] = [result.score for result in results]
            masses[label] = [result.mass for result in results]
            scorers.append(
                calibration_metrics(
                    scores[label], list(dev["label"]), list(dev["kind"]), settings.thresholds, scorer=label,
                    eligible=[settings.enough_mass(result.mass) for result in results],
                )
            )  # fmt: skip
        del model
        release_memory()
    report = {**scorers[0], "dev_set": args.dev, "scorers": scorers}
    if args.output_dir:
        write(report, dev, scores, masses, Path(args.output_dir))
    return report


def write(
    report: dict[str, Any],
    dev: Dataset,
    scores: dict[str, list[float | None]],
    masses: dict[str, list[float | None]],
    output_dir: Path,
) -> None:
    """calibration.json / .md, and scores.jsonl: every dev row with each scorer's score and digit mass."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "calibration.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (output_dir / "calibration.md").write_text("\n".join(calibration_markdown(report)) + "\n", encoding="utf-8")
    with (output_dir / "scores.jsonl").open("w", encoding="utf-8") as handle:
        for index, row in enumerate(dev):
            by_scorer = {
                "scores": {name: values[index] for name, values in scores.items()},
                "masses": {name: values[index] for name, values in masses.items()},
            }
            handle.write(json.dumps({**row, **by_scorer}) + "\n")


def run(argv: list[str] | None = None) -> dict[str, Any]:
    configure_logging(logging.INFO)
    args, settings = make_parser().parse_args_and_config(argv)
    report = calibrate(args, settings)
    print("\n".join(calibration_markdown(report)))
    if args.output_dir:
        print(f"-> {args.output_dir}/calibration.json")
    return report


def make_parser() -> TrlParser:
    return TrlParser((CalibrateArguments, CurationSettings))


if __name__ == "__main__":
    from humpback_trl.cli import run_command

    run_command("calibrate")
