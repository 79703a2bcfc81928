"""A checkpoint's card (peft's README.md, pushed with the checkpoint under hub_strategy checkpoint / all_checkpoints)
names the base model as the final adapter's card does, never the local folder its weights loaded from: also for DPO
and KTO, which continue M_k's adapter, so peft's adapter config already names the base portably (issue 23)."""

import json
from types import SimpleNamespace

from test_no_local_paths import leaking, local_prefixes

from humpback_trl.tiny import TINY_MODEL
from humpback_trl.training import make_portable

LOCAL = "/home/alice/.cache/humpback/tiny-llama-e938aeda7593"
PEFT_CARD = f"""---
base_model: {LOCAL}
library_name: peft
tags:
- base_model:adapter:{LOCAL}
- dpo
---

# Model Card for Model ID
"""


def test_a_continued_adapters_checkpoint_card_names_the_portable_base(tmp_path):
    folder = tmp_path / "m2-dpo" / "checkpoint-2"
    folder.mkdir(parents=True)
    # What peft saves for an adapter loaded from M_k's: its config keeps M_k's portable base, the card the folder.
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": TINY_MODEL}))
    (folder / "README.md").write_text(PEFT_CARD)
    make_portable(folder, SimpleNamespace(output_dir=str(tmp_path / "m2-dpo")), TINY_MODEL)
    card = (folder / "README.md").read_text()
    assert LOCAL not in card
    assert f"base_model: {TINY_MODEL}\n" in card and f"- base_model:adapter:{TINY_MODEL}\n" in card


def test_no_card_of_the_run_names_a_local_path_checkpoints_included(first_run, tmp_path_factory):
    out = first_run[0]
    cards = sorted(out.rglob("checkpoint-*/README.md"))
    assert {card.relative_to(out).parts[0] for card in cards} >= {"myx", "m0", "m1", "m2", "m2-dpo"}
    assert leaking(local_prefixes(tmp_path_factory), out, list(out.rglob("README.md"))) == []
