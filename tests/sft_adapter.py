"""An SFT adapter as `humpback sft` leaves it (LoRA weights, tokenizer, prompt settings), built directly with peft so
the preference tests start from a known M_k in a second instead of training one."""

from pathlib import Path

from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from humpback_trl.collators import SwappedFieldCollator, save_prompt_settings

SYSTEM_PROMPT = "Be brief."


def make_sft_adapter(base_dir: Path, out: Path) -> Path:
    """A random (non-zero) LoRA on the tiny base, with a system prompt in its prompt settings."""
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    # init_lora_weights=False draws both LoRA matrices at random, so M_k differs from its base.
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_prompt_settings(SwappedFieldCollator(tokenizer, direction="forward", system_prompt=SYSTEM_PROMPT), out)
    return out
