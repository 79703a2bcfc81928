"""`humpback kto`: train M_k further with TRL's KTOTrainer (humpback_trl/scripts/preference_trainer.py)."""

from functools import partial

from humpback_trl.scripts import preference_trainer

make_parser = partial(preference_trainer.make_parser, "kto")
run = partial(preference_trainer.run, "kto")

if __name__ == "__main__":
    from humpback_trl.cli import run_command

    run_command("kto")
