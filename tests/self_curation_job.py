"""The SelfCurationCallback through the Python API, as a user adds it to an SFT run (the loop curates in its own
stage): `python self_curation_job.py CANDIDATES CURATION_DIR HUB_REPO|"" <humpback sft options>`, alone or under
accelerate launch. The splits are published, when HUB_REPO is given, as privately as the adapter."""

import sys

from humpback_trl import training
from humpback_trl.callbacks import SelfCurationCallback
from humpback_trl.cli import end_process_group
from humpback_trl.curation import CurationSettings
from humpback_trl.pairs import load_pairs
from humpback_trl.scripts import sft


def main(argv: list[str]):
    candidates, curation_dir, hub_repo, *options = argv
    script_args, training_args, model_args = sft.make_parser().parse_args_and_config(options)[:3]
    callback = SelfCurationCallback(
        load_pairs(candidates, default_source="augmented")[0],
        curation_dir,
        CurationSettings(curation_shard_size=3, calibration_dev_set=None),
        scorer="me/hb-m0",
        hub_repo=hub_repo or None,
        private=training_args.hub_private_repo,
    )
    return training.train(script_args, training_args, model_args, callbacks=[callback]), callback


if __name__ == "__main__":
    main(sys.argv[1:])
    end_process_group()
