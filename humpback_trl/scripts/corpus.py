"""`humpback corpus --source DOCS --output_dir DIR`: prepare segments for self-augmentation.

humpback corpus --config recipes/quickstart/corpus.yaml --output_dir outputs/corpus
python -m humpback_trl.scripts.corpus --config recipes/quickstart/corpus.yaml
"""

from __future__ import annotations

import json
import logging

import datasets
from trl import TrlParser

from humpback_trl.configs import CorpusOutputArguments
from humpback_trl.corpus import CorpusConfig, check_counts, prepare_corpus, write_corpus
from humpback_trl.logs import configure_logging


def make_parser(subparsers=None):
    dataclass_types = (CorpusConfig, CorpusOutputArguments)
    if subparsers is not None:
        return subparsers.add_parser("corpus", help="Prepare corpus segments", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types)


def run(argv: list[str] | None = None) -> datasets.Dataset:
    """`humpback corpus --source DOCS --output_dir DIR`: prepare segments for self-augmentation."""
    configure_logging(logging.INFO)
    config, output = make_parser().parse_args_and_config(argv)
    dataset, counts = prepare_corpus(config)
    folder = write_corpus(dataset, counts, output.output_dir)
    print(json.dumps(counts, indent=2))
    # After writing, so corpus_counts.json is there to read when the stage fails.
    check_counts(counts, config.source)
    print(f"{counts['segments_kept']} segments -> {folder}")
    return dataset


if __name__ == "__main__":
    from humpback_trl.cli import run_command

    run_command("corpus")
