"""Online self-improvement of a Humpback model with TRL's GRPOTrainer, the project's calibrated judges as rewards.

Load the prompts (the instructions of a curated split or any instruction file, in M_k's prompt format) -> load the
reward judge once (the base model by default, `judge_model`, a published adapter; `policy` for the model being
trained, flagged) and measure each reward on labelled data: a reward whose judge is under `min_judge_accuracy` (AUC
or pairwise accuracy) is refused before the policy loads, unless `allow_weak_judge` (the card records it) -> load
the base with M_k's adapter as a trainable PeftModel (TRL's reference for the KL term is a frozen copy of it) ->
train, resuming exactly from the last checkpoint -> save the adapter, M_k's prompt settings, the exact prompt set,
the per-step reward and length history with its plot, and a card naming the judges and their accuracy -> push.

Reward hacking is watched per logged step: the mean reward (and each reward's), the mean completion length, the
share of completions that end with the end-of-turn token (one that rambles to `max_completion_length` does not), and
the KL to M_k; `grpo_report.json` keeps them and `reward_length.png` draws reward and length together. The entry
point is `humpback_trl.scripts.grpo`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from huggingface_hub import ModelCard
from peft import PeftModel
from trl import GRPOConfig, GRPOTrainer, ModelConfig, get_peft_config, get_quantization_config

from humpback_trl.builtin_models import portable_name, resolve_model
from humpback_trl.chat import TAG_CHOICES
from humpback_trl.chat_template import stop_token_ids, template_kwargs
from humpback_trl.collators import SwappedFieldCollator, load_collator
from humpback_trl.configs import GRPOArguments
from humpback_trl.errors import MissingColumnError, UserError
from humpback_trl.hub import public_name, training_card
from humpback_trl.instruction_checks import InstructionChecks, check_reasons
from humpback_trl.logs import peft_wrapping
from humpback_trl.model_specs import model_arguments
from humpback_trl.modeling import InferenceModelArguments, adapter_folder, load_model
from humpback_trl.pairs import load_table
from humpback_trl.preference_training import (
    REFERENCE_ADAPTER,
    base_model,
    base_name,
    copy_prompt_settings,
    load_policy,
    load_tokenizer,
    lora,
    start_link,
)
from humpback_trl.rewards import (
    Judge,
    JudgeAccuracy,
    LikelihoodReward,
    PairwiseReward,
    Reward,
    RubricReward,
    check_accuracy,
    instructions_of,
    judge_accuracy,
    message_text,
)
from humpback_trl.shards import process_state
from humpback_trl.stage_outputs import GRPO, TRAINING
from humpback_trl.training import (
    Artifact,
    ExactResumeMixin,
    PortableSaveMixin,
    check_before_loading,
    make_base_portable,
    prepare_training_args,
    run_settings,
    train_and_publish,
)

logger = logging.getLogger(__name__)

# Measured judge accuracies of this output folder; a leading _ keeps it out of the adapter's push.
CALIBRATION_CACHE = "_judge_calibration.json"
POLICY_JUDGE = "policy"
END_OF_TURN_METRIC = "watch/end_of_turn"
CHECKS_METRIC = "watch/checks_passed"
SUMMARY = (
    "The forward model M_k further trained online with TRL's GRPOTrainer: it samples answers to instructions and a "
    "fixed\njudge, measured on labelled data before training, rewards them (humpback-trl: Li et al., ICLR 2024; a "
    "verification\nsignal as reward after SERL, arXiv 2511.07922). Reward and completion length per step: "
    f"`{GRPO.report}`, `{GRPO.plot}`."
)
SUMMARY_STEPS = 20  # steps the loop report lists; grpo_report.json and the plot hold every logged step
# What the report keeps of each logged step, under its own name.
STEP_METRICS = {
    "reward": "reward",
    "reward_std": "reward_std",
    "completions/mean_length": "completion_length",
    END_OF_TURN_METRIC: "end_of_turn_share",
    CHECKS_METRIC: "checks_passed_share",
    "kl": "kl",
    "loss": "loss",
}


def stage_name(args: GRPOArguments) -> str:
    return args.stage or (f"{args.sft_stage}-grpo" if args.sft_stage else "grpo")


def check_training_args(args: GRPOArguments, training_args: GRPOConfig) -> None:
    """Refuse, before anything loads, reward weights that do not match the rewards, and checkpoints that fall inside
    a generation batch (a resumed run would sample that batch again and train on other completions)."""
    weights = training_args.reward_weights
    if weights is not None and len(weights) != len(args.rewards):
        raise UserError(f"reward_weights {weights} need one weight per reward of {args.rewards}")
    generate_every = training_args.steps_per_generation * training_args.num_iterations
    step = training_args.gradient_accumulation_steps
    if training_args.save_strategy == "steps" and (int(training_args.save_steps) * step) % generate_every:
        raise UserError(
            f"save_steps {training_args.save_steps} x gradient_accumulation_steps {step} is not a multiple of "
            f"steps_per_generation x num_iterations ({generate_every}): a checkpoint inside a generation batch "
            "cannot be resumed exactly."
        )


def instruction_column(name: str, args: GRPOArguments) -> tuple[list[str], dict[str, int]]:
    """One file's instructions (of rows scoring at least `prompt_min_score` when set), stripped, with the rows left
    out counted by reason."""
    table = load_table(name, split=args.data_split)
    needed = [args.prompt_column] + (["score"] if args.prompt_min_score is not None else [])
    missing = [column for column in needed if column not in table.column_names]
    if missing:
        raise MissingColumnError(
            f"{name}: no column(s) {missing}; its columns are {table.column_names}. Set prompt_column to the "
            "instruction column (prompt_min_score needs a scored pool's score column)."
        )
    counts: dict[str, int] = {}
    rows = table[args.prompt_column]
    if args.prompt_min_score is not None:
        low = args.prompt_min_score
        rows = [text for text, score in zip(rows, table["score"], strict=True) if score is not None and score >= low]
        counts[f"{name} below prompt_min_score {low} (left out)"] = len(table) - len(rows)
    kept = [text.strip() for text in rows if isinstance(text, str) and text.strip()]
    if len(kept) < len(rows):
        counts[f"{name} empty (left out)"] = len(rows) - len(kept)
    return kept, {name: len(kept), **counts}


def load_prompts(args: GRPOArguments) -> tuple[list[str], dict[str, int]]:
    """The distinct non-empty instructions of every file, in order; every row left out is counted."""
    instructions, counts = [], {}
    for name in args.prompts:
        kept, file_counts = instruction_column(name, args)
        instructions += kept
        counts |= file_counts
    unique = list(dict.fromkeys(instructions))
    if len(unique) < len(instructions):
        counts["repeated instructions (left out)"] = len(instructions) - len(unique)
    if args.max_prompts is not None and len(unique) > args.max_prompts:
        counts[f"beyond max_prompts {args.max_prompts} (left out)"] = len(unique) - args.max_prompts
        unique = unique[: args.max_prompts]
    if not unique:
        raise UserError(f"No instructions in {args.prompts} (column {args.prompt_column!r}, after prompt_min_score)")
    counts["training prompts"] = len(unique)
    return unique, counts


def prompt_dataset(instructions: Sequence[str], collator: SwappedFieldCollator, tags: str) -> Dataset:
    """TRL's conversational prompts in M_k's format (system prompt, source tags), with the bare instruction the
    judges read."""
    sources = TAG_CHOICES[tags]
    prompts = [collator.prompt_messages({"instruction": text, "source": sources}, "") for text in instructions]
    return Dataset.from_dict({"prompt": prompts, "instruction": list(instructions)})


def load_judge(args: GRPOArguments, base: str, base_label: str) -> Judge:
    """`judge_model`, else the policy's base (`base` its folder or Hub id, `base_label` the name the user gave)."""
    name = resolve_model(args.judge_model) if args.judge_model else base
    model, tokenizer = load_model(model_arguments(name, args.judge_dtype, args.judge_load_in_4bit))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return Judge(args.judge_model or base_label, model, tokenizer)


def make_reward(name: str, judge: Judge, args: GRPOArguments) -> Reward:
    if name == "rubric":
        return RubricReward(judge, args.judge_batch_size, args.rubric_prompt)
    if name == "likelihood":
        return LikelihoodReward(judge, args.judge_batch_size)
    return PairwiseReward(judge, args.judge_batch_size, args.pairwise_length_window)


def measured(reward: Reward, args: GRPOArguments, cache: Path) -> JudgeAccuracy:
    """`judge_accuracy` of `reward`, read back from `cache` when this output folder already measured the same reward,
    judge and dev set: a resumed run does not score the dev set again (minutes for a small judge on a CPU)."""
    dev_set = args.pairwise_dev_set if isinstance(reward, PairwiseReward) else args.calibration_dev_set
    key = f"{reward.__name__}|{reward.judge.name}|{dev_set}|{args.rubric_prompt}"
    known = json.loads(cache.read_text(encoding="utf-8")) if cache.is_file() else {}
    if key in known:
        return JudgeAccuracy(**known[key])
    accuracy = judge_accuracy(reward, dev_set)
    if process_state().is_main_process:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({**known, key: asdict(accuracy)}, indent=2) + "\n", encoding="utf-8")
    return accuracy


def gate(rewards: Sequence[Reward], args: GRPOArguments, output_dir: str) -> tuple[list[JudgeAccuracy], list[str]]:
    """Each reward's judge measured on labelled data; a weak one raises (or, allowed, is named in the second list)."""
    accuracies, weak = [], []
    for reward in rewards:
        accuracy = measured(reward, args, Path(output_dir) / CALIBRATION_CACHE)
        logger.info("Reward %s: judge %s, %s", accuracy.reward, accuracy.judge, accuracy.describe())
        accuracies.append(accuracy)
        problem = check_accuracy(accuracy, args.min_judge_accuracy, args.allow_weak_judge)
        if problem:
            logger.warning("%s; training anyway (allow_weak_judge)", problem)
            weak.append(reward.__name__)
    return accuracies, weak


class WatchMixin:
    """Logs, beside TRL's reward and length metrics, the share of completions that end with an end-of-turn token and
    the share whose (instruction, completion) pair passes the instruction checks of curation: an answer that copies
    its instruction (`copied`) raises the likelihood reward without answering."""

    stop_ids: frozenset[int] = frozenset()
    checks: InstructionChecks = InstructionChecks()

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        ended = sum(1 for ids in completion_ids_list if len(ids) and ids[-1] in self.stop_ids)
        columns = {"instruction": [row["instruction"] for row in inputs]} if "instruction" in inputs[0] else {}
        outputs = [message_text(completion) for completion in completions]
        passed = check_reasons(self.checks, instructions_of(prompts, columns), outputs).count(None)
        local = [ended, passed, len(completion_ids_list)]
        counts = torch.tensor(local, dtype=torch.float32, device=self.accelerator.device)
        ended, passed, total = self.accelerator.gather(counts).view(-1, 3).sum(dim=0).tolist()
        metrics = self._metrics["train" if self.model.training else "eval"]
        metrics[END_OF_TURN_METRIC].append(ended / total)
        metrics[CHECKS_METRIC].append(passed / total)
        return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)


class HumpbackGRPOTrainer(ExactResumeMixin, PortableSaveMixin, WatchMixin, GRPOTrainer):
    """GRPOTrainer that resumes exactly, saves no local path (as every trainer here) and watches for reward hacking."""


def step_history(log_history: Sequence[Mapping[str, Any]], reward_names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per logged training step: the watched metrics and each reward's mean."""
    names = {**STEP_METRICS, **{f"rewards/{name}/mean": f"reward_{name}" for name in reward_names}}
    return [
        {"step": entry["step"], **{short: entry[key] for key, short in names.items() if key in entry}}
        for entry in log_history
        if "reward" in entry
    ]


def plot_reward_and_length(steps: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Mean reward (left axis) and mean completion length (right axis) per step, on one figure: a reward that rises
    with the length alone is the first sign of a judge being gamed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, reward_axis = plt.subplots(figsize=(6, 3.2))
    x = [row["step"] for row in steps]
    reward_axis.plot(x, [row["reward"] for row in steps], color="#4472c4", marker="o", label="mean reward")
    reward_axis.set_xlabel("step")
    reward_axis.set_ylabel("mean reward", color="#4472c4")
    length_axis = reward_axis.twinx()
    lengths = [row.get("completion_length") for row in steps]
    length_axis.plot(x, lengths, color="#ed7d31", marker="s", label="mean completion length")
    length_axis.set_ylabel("mean completion length (tokens)", color="#ed7d31")
    reward_axis.set_title("GRPO: reward and completion length per step", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def grpo_report(
    trainer: GRPOTrainer, args: GRPOArguments, accuracies: Sequence[JudgeAccuracy], weak: Sequence[str]
) -> dict[str, Any]:
    return {
        "stage": stage_name(args),
        "rewards": list(args.rewards),
        "reward_weights": trainer.reward_weights.tolist(),
        "judge": accuracies[0].judge,
        "self_judged": args.judge_model == POLICY_JUDGE,
        "judge_accuracy": [asdict(accuracy) for accuracy in accuracies],
        "min_judge_accuracy": args.min_judge_accuracy,
        "weak": list(weak),
        "steps": step_history(trainer.state.log_history, args.rewards),
    }


def write_report(report: Mapping[str, Any], output_dir: Path) -> None:
    (output_dir / GRPO.report).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if report["steps"]:
        plot_reward_and_length(report["steps"], output_dir / GRPO.plot)


def settings(training_args: GRPOConfig, model_args: ModelConfig, sft_adapter: str | None) -> dict[str, object]:
    beta = training_args.beta
    return {
        "trainer": f"trl GRPOTrainer, loss {training_args.loss_type}, beta {beta}",
        "KL reference": "none (beta 0)" if not beta else ("a frozen copy of M_k's adapter" if sft_adapter else "the "
                        "base model (adapter disabled)"),
        "num_generations": training_args.num_generations,
        "max_completion_length": training_args.max_completion_length,
        "temperature / top_p": f"{training_args.temperature} / {training_args.top_p}",
        "generation": "vLLM" if training_args.use_vllm else "transformers",
        **run_settings(training_args, model_args, lora(model_args, sft_adapter)),
    }  # fmt: skip


def judge_facts(report: Mapping[str, Any]) -> dict[str, str]:
    """Each reward with its weight, judge and measured accuracy; the self-judged and weak-judge flags."""
    facts = {}
    for row, weight in zip(report["judge_accuracy"], report["reward_weights"], strict=True):
        weak = "; WEAK, trained with allow_weak_judge" if row["reward"] in report["weak"] else ""
        facts[f"reward {row['reward']} (weight {weight:g})"] = (
            f"judge `{public_name(row['judge'])}`: {row['metric']} {row['value']:.3f} on `{row['dev_set']}` "
            f"({row['rows']} rows; bar {report['min_judge_accuracy']}{weak})"
        )
    if report["self_judged"]:
        facts["self-judged"] = "yes: the judge is the policy being trained (it can learn to please itself)"
    return facts


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def watch_facts(steps: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """First and last logged step of the reward-hacking watch (every step is in the report)."""
    if not steps:
        return {}
    first, last = steps[0], steps[-1]
    return {
        f"{label}, step {first['step']} -> {last['step']}": f"{_rounded(first.get(key))} -> {_rounded(last.get(key))}"
        for label, key in (
            ("mean reward", "reward"),
            ("mean completion length (tokens)", "completion_length"),
            ("share ending with the end-of-turn token", "end_of_turn_share"),
            ("share passing the instruction checks", "checks_passed_share"),
        )
    }


def summary(report: Mapping[str, Any], max_rows: int = SUMMARY_STEPS) -> dict[str, str]:
    """The loop report's lines for a GRPO stage: each reward's judge and accuracy, then reward, completion length,
    end-of-turn share, instruction-checks share and KL per logged step (at most `max_rows` steps, evenly spread, the
    last always shown)."""
    steps = report["steps"]
    count = min(max_rows, len(steps))
    shown = sorted({round(i * (len(steps) - 1) / max(count - 1, 1)) for i in range(count)})
    lines = {"stage": f"{report['stage']} (TRL GRPOTrainer, online)", **judge_facts(report)}
    for row in (steps[i] for i in shown):
        lines[f"step {row['step']}"] = (
            f"reward {_rounded(row.get('reward'))} | length {_rounded(row.get('completion_length'))} tokens | "
            f"end-of-turn {_rounded(row.get('end_of_turn_share'))} | checks passed "
            f"{_rounded(row.get('checks_passed_share'))} | KL {_rounded(row.get('kl'))}"
        )
    return lines


def describe_grpo(
    args: GRPOArguments, model_args: ModelConfig, counts: dict[str, int], judged: tuple[list[JudgeAccuracy], list[str]]
) -> Callable[[GRPOTrainer], Artifact]:
    """What a GRPO stage publishes: the trained adapter alone, M_k's prompt settings, the reward and length history
    with its plot, the exact prompt set and the card naming the judges and their accuracy."""

    def describe(trainer: GRPOTrainer) -> Artifact:
        model = trainer.accelerator.unwrap_model(trainer.model)
        if isinstance(model, PeftModel) and REFERENCE_ADAPTER in model.peft_config:
            # The KL reference is M_k's adapter unchanged, published already: the artifact is the trained adapter.
            model.delete_adapter(REFERENCE_ADAPTER)
        report = grpo_report(trainer, args, *judged)
        steps = report["steps"]
        base = base_name(args, model_args)
        prompts = ", ".join(public_name(name) for name in args.prompts)
        run = settings(trainer.args, model_args, args.sft_adapter)

        def card(data_repo: str | None) -> ModelCard:
            links = {"starting model (M_k)": start_link(args), "prompts": prompts,
                     "exact prompt set": data_repo or TRAINING.training_data}  # fmt: skip
            return training_card(
                base_model=portable_name(base),
                stage=stage_name(args),
                tags=["grpo"],
                summary=SUMMARY,
                facts={**{k: f"`{v}`" for k, v in links.items()}, **judge_facts(report), **watch_facts(steps)},
                datasets=[*args.prompts, links["exact prompt set"]],
                counts=counts,
                settings=run,
            )

        def write_beside(folder: Path) -> None:
            copy_prompt_settings(args, trainer, folder)
            write_report(report, folder)

        return Artifact(
            stage=stage_name(args),
            hub_prefix=args.hub_prefix,
            base=base,
            training_set=trainer.train_dataset,
            counts=counts,
            card=card,
            data_summary="The exact prompt set `{model}` was trained on with GRPO (TRL conversational format).",
            data_links={"prompts": prompts},
            write_beside=write_beside,
        )

    return describe


def build_trainer(
    args: GRPOArguments,
    training_args: GRPOConfig,
    model_args: ModelConfig,
) -> tuple[HumpbackGRPOTrainer, dict[str, int], tuple[list[JudgeAccuracy], list[str]]]:
    check_before_loading(training_args)
    check_training_args(args, training_args)
    instructions, counts = load_prompts(args)
    base = base_model(args, model_args)
    self_judged = args.judge_model == POLICY_JUDGE
    judged: tuple[list[JudgeAccuracy], list[str]] = ([], [])
    if not self_judged:
        # Before the policy loads: a judge under the bar stops the run at once.
        judge = load_judge(args, base, base_name(args, model_args))
        rewards = [make_reward(name, judge, args) for name in args.rewards]
        judged = gate(rewards, args, training_args.output_dir)
    fresh = args.sft_adapter is None
    prepare_training_args(
        training_args,
        model_args,
        stage=stage_name(args),
        hub_prefix=args.hub_prefix,
        adapter=not fresh or model_args.use_peft,
        loads_model=fresh,
    )
    tokenizer = load_tokenizer(args, model_args, base)
    folder = adapter_folder(InferenceModelArguments(adapter=args.sft_adapter)) if args.sft_adapter else None
    collator = load_collator(tokenizer, folder, "forward")
    # The template arguments M_k was prompted with (Llama 3's pinned date...) render every prompt TRL generates from.
    training_args.chat_template_kwargs = {
        **template_kwargs(collator.template_kwargs),
        **(training_args.chat_template_kwargs or {}),
    }
    policy = base if fresh else load_policy(args, model_args, base)
    if not fresh:
        # Completions end where M_k was trained to end its turn (and at EOS): TRL stops on the generation config's.
        policy.get_base_model().generation_config.eos_token_id = stop_token_ids(tokenizer)
    if self_judged:
        judge = Judge("the policy being trained (self-judged)", policy, tokenizer, is_policy=True)
        rewards = [make_reward(name, judge, args) for name in args.rewards]
    with peft_wrapping():
        trainer = HumpbackGRPOTrainer(
            model=policy,
            reward_funcs=rewards,
            args=training_args,
            train_dataset=prompt_dataset(instructions, collator, args.tags),
            processing_class=tokenizer,
            quantization_config=get_quantization_config(model_args) if fresh else None,
            peft_config=get_peft_config(model_args) if fresh else None,
        )
    make_base_portable(trainer, base_name(args, model_args))
    trainer.stop_ids = frozenset(stop_token_ids(tokenizer))
    if self_judged:
        judge.model = trainer.model
        judged = gate(rewards, args, training_args.output_dir)
    return trainer, counts, judged


def train_grpo(args: GRPOArguments, training_args: GRPOConfig, model_args: ModelConfig) -> GRPOTrainer:
    trainer, counts, judged = build_trainer(args, training_args, model_args)
    return train_and_publish(trainer, describe_grpo(args, model_args, counts, judged))
