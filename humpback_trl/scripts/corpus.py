"""`humpback corpus --source DOCS --output_dir DIR`: prepare segments for self-augmentation.

humpback corpus --config recipes/quickstart/corpus.yaml --output_dir outputs/corpus
python -m humpback_trl.scripts.corpus --config recipes/quickstart/corpus.yaml
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import datasets
from trl import TrlParser

from humpback_trl.corpus import CorpusConfig, prepare_corpus, write_corpus


@dataclass
class CorpusOutputArguments:
    output_dir: str = field(default="outputs/corpus", metadata={"help": "Where the segments and counts are written."})


def make_parser(subparsers=None):
    dataclass_types = (CorpusConfig, CorpusOutputArguments)
    if subparsers is not None:
        return subparsers.add_parser("corpus", help="Prepare corpus segments", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types)


def run(argv: list[str] | None = None) -> datasets.Dataset:
    """`humpback corpus --source DOCS --output_dir DIR`: prepare segments for self-augmentation."""
    config, output = make_parser().parse_args_and_config(argv)
    dataset, counts = prepare_corpus(config)
    folder = write_corpus(dataset, counts, output.output_dir)
    print(json.dumps(counts, indent=2))
    print(f"{counts['segments_kept']} segments -> {folder}")
    return dataset


if __name__ == "__main__":
    run()
