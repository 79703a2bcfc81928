"""`humpback dpo`: train M_k further with TRL's DPOTrainer (humpback_trl/scripts/preference_trainer.py)."""

from functools import partial

from humpback_trl.scripts import preference_trainer

make_parser = partial(preference_trainer.make_parser, "dpo")
run = partial(preference_trainer.run, "dpo")

if __name__ == "__main__":
    from humpback_trl.cli import run_command

    run_command("dpo")
