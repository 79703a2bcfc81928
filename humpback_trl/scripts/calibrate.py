"""`humpback calibrate`: how well does a scorer's rubric score separate good answers from bad ones?

    humpback calibrate --scorer outputs/quickstart/m0 outputs/quickstart/m1 --dev builtin:dev --output_dir out/cal
    humpback calibrate --scorer MODEL --prompt_styles verbatim score-only
    humpback calibrate --scorer MODEL --dev oasst_export.jsonl --dev_format oasst --save_dev oasst_dev.jsonl

    humpback calibrate --scorer builtin:smollm2-135m-instruct --curation_mode logits likelihood --output_dir out/cal

Each scorer (adapter folder, model folder or Hub id) scores the labelled dev set with the curation settings
(instruction checks, mode, prompt, thresholds or fractions, digit-mass floor, engine: `curation_engine`), once per
curation mode listed (and per rubric variant in logits mode); a pair rejected by the instruction checks ranks below
every scored pair, so the AUC measures checks and score together. OUTPUT_DIR/calibration.json holds the first row's
`auc`, `auc_by_kind`, `precision` / `recall` per threshold and `scorer`, and every (scorer, mode, prompt) row under
`scorers`; scores.jsonl every dev row with each row's score, check and likelihood features.

    humpback calibrate --judge builtin:smollm2-135m-instruct --pairwise_dev builtin:pairwise_dev \
        --judge_method pairwise rubric likelihood --output_dir out/judge

With --judge, each evaluation judge compares labelled pairs (TRL's preference format) with each method, on `engine`
as in `humpback eval`; calibration.json holds the first method's `pairwise_accuracy`, `accuracy_by_kind`,
`position_consistency` (pairwise cue) and `method`, and every (judge, method) under `methods`
(humpback_trl/judges.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from datasets import Dataset
from trl import TrlParser

from humpback_trl.calibration import (
    calibration_markdown,
    load_dev_set,
    load_oasst_dev_set,
)
from humpback_trl.configs import CalibrateArguments, CalibrationSettings
from humpback_trl.curation import CurationSettings, dev_metrics, dev_thresholds, score_checked
from humpback_trl.engines import choose_engine, load_engine
from humpback_trl.errors import UserError
from humpback_trl.judges import (
    MIN_JUDGE_ACCURACY,
    Judge,
    JudgeOptions,
    calibrate_judge,
    calibration_lines,
    load_pairwise_dev,
    write_calibration,
)
from humpback_trl.logs import configure_logging
from humpback_trl.model_specs import model_arguments
from humpback_trl.modeling import InferenceModelArguments, load_tokenizer


def calibrate(args: CalibrateArguments, settings: CalibrationSettings) -> dict[str, Any]:
    if args.dev_format == "oasst":
        dev = load_oasst_dev_set(args.dev, split=args.dev_split, limit=args.oasst_limit)
    else:
        dev = load_dev_set(args.dev, split=args.dev_split)
    if args.save_dev:
        dev.to_json(args.save_dev, lines=True, force_ascii=False)
    pairs = list(zip(dev["instruction"], dev["output"], strict=True))
    labels, kinds = list(dev["label"]), list(dev["kind"])
    variants = calibration_variants(settings, args.prompt_styles)
    scorers, records = [], {}
    for name in args.scorer:
        spec = model_arguments(name, args.dtype, args.load_in_4bit)
        scorer = load_engine(spec, scoring_engine(settings, spec))
        tokenizer = load_tokenizer(spec)
        for suffix, variant in variants:
            label = f"{name}{suffix}"
            results, reasons = score_checked(scorer, tokenizer, pairs, variant, show_progress=True)
            scores, masses = [r.score for r in results], [r.mass for r in results]
            thresholds = dev_thresholds(scores, masses, variant)
            metrics = dev_metrics(label, scores, masses, labels, kinds, variant, thresholds)
            scorers.append({**metrics, "rejected_by_checks": sum(reason is not None for reason in reasons)})
            records[label] = [
                {"score": r.score, "mass": r.mass, "check": reason, **r.likelihood_fields()}
                for r, reason in zip(results, reasons, strict=True)
            ]
        scorer.release()
    report = {**scorers[0], "dev_set": args.dev, "scorers": scorers}
    if args.output_dir:
        write(report, dev, records, Path(args.output_dir))
    return report


def scoring_engine(settings: CalibrationSettings, spec: InferenceModelArguments) -> str:
    """curation_engine, with `choose_engine`'s rule for likelihood mode with an adapter when any mode listed is
    likelihood: one engine scores every mode."""
    return choose_engine(settings.curation_engine, spec, "likelihood" in settings.curation_mode, "curation_engine")


def calibration_variants(settings: CalibrationSettings, styles: list[str]) -> list[tuple[str, CurationSettings]]:
    """(label suffix, settings) per mode, and per rubric variant in logits mode; the suffix names the mode where
    several are listed and the variant where several are."""
    variants = []
    for mode in settings.curation_mode:
        for_mode = settings.for_mode(mode)
        mode_part = [mode] if len(settings.curation_mode) > 1 else []
        if mode != "logits" or not styles:
            variants.append((mode_part, for_mode))
            continue
        for style in styles:
            style_part = [style] if len(styles) > 1 else []
            variants.append((mode_part + style_part, dataclasses.replace(for_mode, curation_prompt=style)))
    return [(f" [{', '.join(parts)}]" if parts else "", variant) for parts, variant in variants]


def write(report: dict[str, Any], dev: Dataset, records: dict[str, list[dict[str, Any]]], output_dir: Path) -> None:
    """calibration.json / .md, and scores.jsonl: every dev row with each row's score, digit mass, check and
    likelihood features (the last two where they apply)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "calibration.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (output_dir / "calibration.md").write_text("\n".join(calibration_markdown(report)) + "\n", encoding="utf-8")
    with (output_dir / "scores.jsonl").open("w", encoding="utf-8") as handle:
        for index, row in enumerate(dev):
            by_scorer = {
                "scores": {name: values[index]["score"] for name, values in records.items()},
                "masses": {name: values[index]["mass"] for name, values in records.items()},
                "checks": {name: values[index]["check"] for name, values in records.items()},
                "features": {
                    name: {key: value for key, value in values[index].items() if key not in ("score", "mass", "check")}
                    for name, values in records.items()
                    if values[index].get("pmi") is not None
                },
            }
            handle.write(json.dumps({**row, **by_scorer}) + "\n")


def calibrate_judges(args: CalibrateArguments) -> dict[str, Any]:
    """Each judge's pairwise accuracy with each method on the labelled pairs (the eval stage's defaults: margins,
    undecided below MIN_JUDGE_ACCURACY) and the seconds it took; calibration.json holds the first (judge, method)'s
    metrics and `methods`."""
    dev = load_pairwise_dev(args.pairwise_dev)
    methods, records = [], {}
    for name in args.judge:
        spec = model_arguments(name, args.dtype, args.load_in_4bit)
        engine = load_engine(spec, choose_engine(args.engine, spec, "likelihood" in args.judge_method))
        tokenizer = load_tokenizer(spec)
        for method in args.judge_method:
            judge = Judge(engine, tokenizer, method, JudgeOptions())
            start = time.perf_counter()
            metrics, rows = calibrate_judge(
                judge, dev, judge_name=name, dev_set=args.pairwise_dev, min_accuracy=MIN_JUDGE_ACCURACY
            )
            methods.append({**metrics, "seconds": round(time.perf_counter() - start, 1)})
            records[f"{name} [{method}]" if len(args.judge) > 1 else method] = rows
        engine.release()
    report = {**methods[0], "methods": methods}
    print("\n".join(calibration_lines(methods)))
    if args.output_dir:
        write_calibration(report, records, Path(args.output_dir))
        print(f"-> {args.output_dir}/calibration.json")
    return report


def check_engines(args: CalibrateArguments, settings: CalibrationSettings) -> None:
    """--scorer scores as curation does, on curation_engine; --judge judges as the evaluation does, on engine. The
    other option would do nothing, so it is refused when set."""
    if args.judge and settings.curation_engine != "auto":
        raise UserError(f"curation_engine {settings.curation_engine} applies to --scorer; --judge runs on --engine")
    if args.scorer and args.engine != "auto":
        raise UserError(f"engine {args.engine} applies to --judge; --scorer runs on --curation_engine")


def run(argv: list[str] | None = None) -> dict[str, Any]:
    configure_logging(logging.INFO)
    args, settings = make_parser().parse_args_and_config(argv)
    check_engines(args, settings)
    if args.judge:
        return calibrate_judges(args)
    report = calibrate(args, settings)
    print("\n".join(calibration_markdown(report)))
    if args.output_dir:
        print(f"-> {args.output_dir}/calibration.json")
    return report


def make_parser() -> TrlParser:
    return TrlParser((CalibrateArguments, CalibrationSettings))


if __name__ == "__main__":
    from humpback_trl.cli import run_command

    run_command("calibrate")
