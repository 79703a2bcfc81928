"""`humpback preferences`: preference data from the rubric scores, for `humpback dpo` and `humpback kto`.

    humpback preferences --config recipes/quickstart/preferences.yaml --adapter outputs/quickstart/m2 \
        --instructions outputs/quickstart/curate-2/scored.jsonl
    humpback preferences --config recipes/quickstart/preferences.yaml --kind kto --adapter outputs/quickstart/m2 \
        --scored_pool outputs/quickstart/curate-2/scored.jsonl
    accelerate launch -m humpback_trl.scripts.preferences --config ...

dpo: M_k samples answers per instruction and scores them (resumable shards across processes); kto: the scored pool
split at the thresholds. In the loop both read the last curation stage's pool, curate-<K>/scored.jsonl. Writes
<kind>.jsonl (and <kind>/), report.json / report.md and a card.
"""

from __future__ import annotations

import logging
from pathlib import Path

from datasets import Dataset

from humpback_trl.logs import configure_logging
from humpback_trl.modeling import InferenceModelArguments
from humpback_trl.preferences import PreferenceArguments, build_preferences
from humpback_trl.scripts.parsing import HumpbackParser
from humpback_trl.shards import process_state
from humpback_trl.stage_outputs import PREFERENCES


def make_parser(subparsers=None) -> HumpbackParser:
    dataclass_types = (PreferenceArguments, InferenceModelArguments)
    if subparsers is not None:
        return subparsers.add_parser(
            "preferences", help="Make DPO pairs or KTO rows from rubric scores", dataclass_types=dataclass_types
        )
    return HumpbackParser(dataclass_types)


def run(argv: list[str] | None = None) -> Dataset:
    # INFO on the main process only; process_state forms the group of a CPU launch too, where a plain
    # PartialState() would make every process its own main process.
    configure_logging(logging.INFO if process_state().is_main_process else logging.WARNING)
    args, model_args = make_parser().parse_args_and_config(argv)
    data, report = build_preferences(args, model_args)
    kept = report["pairs_kept"] if args.kind == "dpo" else f"{report['desirable']}+{report['undesirable']}"
    print(f"{args.kind.upper()} rows kept: {kept} -> {Path(args.output_dir) / PREFERENCES[args.kind].data}")
    return data


if __name__ == "__main__":
    from humpback_trl.cli import run_command

    run_command("preferences")
