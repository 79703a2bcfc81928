"""`humpback curate`: a forward model scores a candidate pool and writes the scored pool, A4 and A5.

    humpback curate --config recipes/quickstart/curate.yaml \
        --candidates outputs/quickstart/augment/candidates.jsonl --adapter outputs/quickstart/m0 --iteration 1
    accelerate launch -m humpback_trl.scripts.curate --config ...

In the loop this is the curate-k stage: M_{k-1}'s adapter, merged into its base for inference, scores the pool for
iteration k in its own process and folder, so no training job ever scores (FSDP / ZeRO-3 training works, and the
pushed adapters carry no curation files). The SelfCurationCallback runs the same engine inside a training job for
those who want that.
"""

from __future__ import annotations

import logging

from accelerate import PartialState
from datasets import DatasetDict, concatenate_datasets
from trl import TrlParser

from humpback_trl.configs import CurateArguments
from humpback_trl.curation import CurationSettings, curate, load_scorer
from humpback_trl.hub import curated_repo_id
from humpback_trl.logs import configure_logging
from humpback_trl.modeling import InferenceModelArguments
from humpback_trl.pairs import load_pairs


def run(argv: list[str] | None = None) -> DatasetDict:
    configure_logging(logging.INFO if PartialState().is_main_process else logging.WARNING)
    args, model_args, settings = make_parser().parse_args_and_config(argv)
    pools = [load_pairs(name, default_source="augmented", split=args.candidates_split)[0] for name in args.candidates]
    candidates = concatenate_datasets(pools) if len(pools) > 1 else pools[0]
    # transformers (the adapter merged into its base) or a vLLM engine serving it: curation_engine decides.
    model, tokenizer = load_scorer(model_args, settings)
    hub_repo = curated_repo_id(args.hub_prefix, args.iteration) if args.push_to_hub else None
    curated, summary = curate(
        model,
        tokenizer,
        candidates,
        settings,
        iteration=args.iteration,
        scorer=model_args.adapter or model_args.model_name_or_path,
        output_dir=args.output_dir,
        hub_repo=hub_repo,
        private=args.hub_private_repo,
    )
    if PartialState().is_main_process:
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
