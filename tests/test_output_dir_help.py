"""The `output_dir` help of the generating stages names what they write (stage_outputs.py), and nothing they no
longer write."""

from dataclasses import fields

import pytest

from humpback_trl.configs import AugmentArguments, MagpieArguments
from humpback_trl.stage_outputs import AUGMENT, MAGPIE


def output_dir_help(arguments: type) -> str:
    return next(item.metadata["help"] for item in fields(arguments) if item.name == "output_dir")


@pytest.mark.parametrize(
    ("arguments", "written"),
    [(AugmentArguments, [AUGMENT.candidates, "shards/"]), (MagpieArguments, [MAGPIE.pairs, "generation/shards/"])],
)
def test_the_output_dir_help_names_the_files_the_stage_writes(arguments, written):
    text = output_dir_help(arguments)
    assert all(name in text for name in written)
    assert "save_to_disk" not in text
