"""Standalone self-curation: a forward model scores a candidate pool and writes the scored pool, A4 and A5.

    humpback curate --candidates outputs/quickstart/augment/candidates.jsonl --adapter outputs/quickstart/m0
    accelerate launch -m humpback_trl.scripts.curate --config ...

Inside the loop the same engine runs from the SelfCurationCallback at the end of the forward model's training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datasets import DatasetDict
from trl import TrlParser

from humpback_trl.curation import CurationSettings, curate
from humpback_trl.hub import curated_repo_id
from humpback_trl.modeling import InferenceModelArguments, load_model
from humpback_trl.pairs import load_pairs


@dataclass
class CurateArguments:
    candidates: str = field(metadata={"help": "Candidate pairs: a file, a folder or a Hub dataset id."})
    candidates_split: str = "train"
    iteration: int = field(default=1, metadata={"help": "The iteration whose training data this curation selects."})
    output_dir: str = "outputs/curate"
    hub_prefix: str | None = field(default=None, metadata={"help": "Push to <hub_prefix>-curated-<iteration>."})
    push_to_hub: bool = False


def run(argv: list[str] | None = None) -> DatasetDict:
    args, model_args, settings = make_parser().parse_args_and_config(argv)
    candidates, _ = load_pairs(args.candidates, default_source="augmented", split=args.candidates_split)
    model, tokenizer = load_model(model_args)
    hub_repo = curated_repo_id(args.hub_prefix, args.iteration) if args.push_to_hub and args.hub_prefix else None
    curated, summary = curate(
        model,
        tokenizer,
        candidates,
        settings,
        iteration=args.iteration,
        scorer=model_args.adapter or model_args.model_name_or_path,
        output_dir=args.output_dir,
        hub_repo=hub_repo,
    )
    print(
        f"Scored {summary['candidates']} candidates: A4 {summary['a4']}, A5 {summary['a5']}, "
        f"unparsed {summary['unparsed']} -> {args.output_dir}"
    )
    return curated


def make_parser(subparsers=None) -> TrlParser:
    dataclass_types = (CurateArguments, InferenceModelArguments, CurationSettings)
    if subparsers is not None:
        return subparsers.add_parser("curate", help="Score candidate pairs", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types)


if __name__ == "__main__":
    from humpback_trl.cli import run_command

    run_command("curate")
