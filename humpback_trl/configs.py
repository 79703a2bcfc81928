"""Every command's options, declared once: small shared groups (sampling, batching, engine, Hub publishing,
scoring, judging...) that each command's argument dataclass composes by inheritance, as TRL's `ScriptArguments` /
`ModelConfig` and the alignment-handbook's `configs.py` are reused across scripts.

An option has one name, one type, one help text and one default wherever it appears; a group's `SECTION` titles
its options in `--help`. Where a command legitimately
needs another default (the rewriter samples greedily, an instruction is shorter than an answer), its class
re-declares the field with `default_for(Group, "option", value)`: the same option and help, that command's default;
tests/test_configs.py holds the list of such overrides. Options renamed in this release are in `RENAMED`: the
parser still accepts the old spelling, with a one-line deprecation note (`humpback_trl.scripts.parsing`).

This module imports the standard library and torch-free modules of ours only, so `humpback <command> --help` reads
the options without loading torch. Checks that need the model stack (a judge method's name, an adapter's short
name) import it inside `__post_init__`: building the help never runs them, and a command that parses its options
loads that stack anyway.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from humpback_trl.errors import UserError
from humpback_trl.paths import check_local
from humpback_trl.tagging import INFERENCE_SOURCES

if TYPE_CHECKING:
    from humpback_trl.instruction_checks import InstructionChecks
    from humpback_trl.likelihood import LikelihoodWeights

# ---- Defaults and choices the options name ----------------------------------------------------------------------
# The modules that use these values import them from here. Those marked (*) are also defined in a module that
# imports torch (judges, scoring, collators, likelihood, instruction_checks, calibration, rewards);
# tests/test_configs.py asserts they agree.

ENGINES: tuple[str, ...] = ("auto", "transformers", "vllm")
TAG_CHOICES: dict[str, tuple[str, ...]] = {
    "both": INFERENCE_SOURCES,
    "seed": ("seed",),
    "augmented": ("augmented",),
    "none": (),
}
BUNDLED_PAIRWISE_DEV = "builtin:pairwise_dev"  # (*)
BUNDLED_DEV_SET = "builtin:dev"  # (*)
BUNDLED_EVAL_SET = "builtin:eval"
MIN_JUDGE_ACCURACY = 0.6  # (*)
RUBRIC_MARGIN = 0.1  # (*)
LIKELIHOOD_MARGIN = 0.0  # (*)
LENGTH_WINDOW = 0.2  # (*)
BOOTSTRAP_SEED = 0
INSTRUCTION_CHECKS: tuple[str, ...] = ("too_short", "too_long", "loop", "prompt_echo", "copied", "unrelated")  # (*)
DEFAULT_INSTRUCTION_CHECKS: tuple[str, ...] = INSTRUCTION_CHECKS[:-1]  # (*)
# (*) LikelihoodWeights()
LIKELIHOOD_WEIGHTS: dict[str, float] = {"pmi": 1.0, "end": 0.2, "cond": 0.5, "ifd": 0.0, "with_ifd": False}
DEFAULT_BACKWARD_PROMPT = (  # (*)
    "Write the most likely question or instruction that the following text answers. "
    "Reply with the instruction only.\n\n{output}"
)
DEFAULT_BOILERPLATE_HEADERS = (
    "advertisement", "advertising", "sponsored", "forum", "quick link", "free newsletter", "newsletter",
    "related post", "related article", "you may also like", "share this", "comment", "leave a reply", "navigation",
    "menu", "subscribe", "cookie policy", "cookie settings", "privacy policy", "terms of use", "sign up", "log in",
    "login", "follow us", "contact us", "sitemap", "recent post", "popular post", "skip to content",
)  # fmt: skip
# After the paper's rewriting step ("as similar as possible to the original, no new facts"), with what web text
# carries and an answer does not named, so the writer knows what to drop.
DEFAULT_REWRITE_PROMPT = (
    "Below is an instruction from a user and a source text taken from the web that answers it. Rewrite the source "
    "as the answer an AI assistant would give to the instruction. Keep every fact, number, name and step of the "
    "source that answers the instruction, keep it as close to the source as you can, and add no fact that is not "
    "in the source. Leave out what is not part of an answer: the web page's voice and personal asides, navigation "
    "text, links, advertising, comments and calls to share.\n\n"
    "Instruction:\n{instruction}\n\nSource:\n{source}\n\nWrite only the answer."
)
REWRITE_PLACEHOLDERS = ("{instruction}", "{source}")
REWRITE_POLICIES = ("keep_original", "drop")
PREFERENCE_KINDS: tuple[str, ...] = ("dpo", "kto")
LOW_THRESHOLD = 2.5
PANELS = ("mean", "min")
SPLITS = ("a4", "a5")
# The paper's A5 and A4 shares of its ~502k candidates (41,821 and 195,043; Li et al. 2024, Table 2): likelihood
# mode's defaults, as its score has no 1-5 scale to put a threshold on.
PAPER_A5_SHARE = 0.083
PAPER_A4_SHARE = 0.388
OFF = ("", "none", "null")
DEV_FORMATS = ("labelled", "oasst")
MAGPIE_USES = ("none", "candidates", "seed")
PREFERENCES = ("none", "dpo", "kto", "grpo")
REWRITES = ("none", "replace", "add")

# Old option name -> new name: accepted for one release, with a deprecation note.
RENAMED: dict[str, str] = {
    "scoring_mode": "curation_mode",
    "scoring_prompt": "curation_prompt",
    "scoring_batch_size": "curation_batch_size",
    "scoring_max_new_tokens": "curation_max_new_tokens",
}


def default_for(group: type, name: str, default: Any) -> Any:
    """The option `name` of `group` with a command's own default: same help, another default."""
    inherited = group.__dataclass_fields__[name]
    if callable(default) and not isinstance(default, (str, int, float, bool)):
        return field(default_factory=default, metadata=inherited.metadata)
    return field(default=default, metadata=inherited.metadata)


def check_engine(engine: str, option: str = "engine") -> None:
    if engine not in ENGINES:
        raise UserError(f"{option} must be one of {ENGINES}, got {engine!r}")


def check_tags(tags: str) -> None:
    if tags not in TAG_CHOICES:
        raise UserError(f"tags must be one of {sorted(TAG_CHOICES)}, got {tags!r}")


def as_list(values: list[str] | str) -> list[str]:
    """A list option: a single value written as a YAML string would otherwise be read character by character."""
    return [values] if isinstance(values, str) else list(values)


def off_to_empty(values: list[str] | str) -> list[str]:
    """A list option where `none` (or an empty value) means no entries."""
    values = as_list(values)
    return [] if all(value.strip().lower() in OFF for value in values) else values


# ---- Shared groups --------------------------------------------------------------------------------------------


@dataclass
class SamplingConfig:
    """Decoding settings; `do_sample=False` is greedy decoding and ignores temperature and top_p."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    do_sample: bool = True


@dataclass
class SamplingArguments:
    """How a command samples its texts; the defaults are the paper's nucleus sampling (T=0.7, top-p=0.9)."""

    SECTION = "generation"

    temperature: float = field(
        default=0.7, metadata={"help": "Sampling temperature (the paper's 0.7); 0 decodes greedily."}
    )
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling top-p (the paper's 0.9)."})
    max_new_tokens: int = field(default=512, metadata={"help": "Longest generated text, in new tokens."})
    greedy: bool = field(default=False, metadata={"help": "Greedy decoding instead of sampling."})

    @property
    def sampling(self) -> SamplingConfig:
        do_sample = not self.greedy and self.temperature > 0
        return SamplingConfig(self.temperature, self.top_p, self.max_new_tokens, do_sample=do_sample)


@dataclass
class BatchArguments:
    SECTION = "generation"

    token_budget: int = field(default=16384, metadata={"help": "Prompt + new tokens per generation batch."})


@dataclass
class ShardArguments:
    SECTION = "generation"

    shard_size: int = field(default=64, metadata={"help": "Rows per resumable shard."})


@dataclass
class SeedArguments:
    SECTION = "generation"

    seed: int = field(
        default=42,
        metadata={
            "help": "Sampling seed; each shard seeds from it and its first row, so a resumed shard samples alike."
        },
    )


@dataclass
class EngineArguments:
    SECTION = "generation"

    engine: str = field(
        default="auto",
        metadata={"help": "auto (vllm where installed, else transformers) | transformers (batched) | vllm."},
    )

    def __post_init__(self) -> None:
        check_engine(self.engine)


@dataclass
class TagArguments:
    SECTION = "generation"

    tags: str = field(
        default="both",
        metadata={"help": "Source tags on adapters' prompts: both (the paper's best) | seed | augmented | none."},
    )

    def __post_init__(self) -> None:
        check_tags(self.tags)


@dataclass
class HubPrefixArguments:
    SECTION = "publishing"

    hub_prefix: str | None = field(
        default=None,
        metadata={
            "help": "Hub repo prefix (ORG/NAME): the command pushes to <hub_prefix>-<what it makes>, e.g. "
            "-m0 and -m0-data, -candidates, -curated-1, -magpie, -rewritten-1, -preferences-dpo."
        },
    )


@dataclass
class PushArguments(HubPrefixArguments):
    SECTION = "publishing"

    push_to_hub: bool = field(
        default=False, metadata={"help": "Push what the command makes to the Hub, under hub_prefix."}
    )


@dataclass
class PublishArguments(PushArguments):
    SECTION = "publishing"

    hub_private_repo: bool | None = field(
        default=None,
        metadata={"help": "Create the dataset repos private (default: the Hub's); set it as the models' is set."},
    )


@dataclass
class LoadArguments:
    SECTION = "model loading"

    dtype: str = field(
        default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU), bfloat16, float16 or float32."}
    )
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the model(s) in 4-bit nf4 (bitsandbytes)."})


@dataclass
class TemplateArguments:
    SECTION = "model loading"

    chat_template_name: str | None = field(
        default=None,
        metadata={"help": "For tokenizers holding several named templates (Command R+): the one to use (default)."},
    )


@dataclass
class DataSplitArguments:
    SECTION = "data"

    data_split: str = field(default="train", metadata={"help": "Split to read from folders and Hub datasets."})


@dataclass
class InstructionColumnArguments:
    SECTION = "data"

    instruction_column: str = field(default="instruction", metadata={"help": "Column holding the instruction."})


@dataclass
class InstructionLimitArguments:
    SECTION = "data"

    max_instructions: int | None = field(default=None, metadata={"help": "Use only the first N instructions."})


@dataclass
class StageArguments:
    SECTION = "training stage"

    stage: str | None = field(
        default=None,
        metadata={
            "help": "Artifact name (Hub repo <hub_prefix>-<stage>); default myx (backward) or m<iteration> for sft, "
            "<sft_stage>-<dpo|kto|grpo> (else dpo, kto or grpo) for preference training."
        },
    )


@dataclass
class DedupArguments:
    SECTION = "data"

    exact_dedup: bool = field(
        default=True, metadata={"help": "Drop repeats of a whitespace/case-normalised text (segment or instruction)."}
    )
    near_dedup_threshold: float | None = field(
        default=0.8, metadata={"help": "MinHash-LSH Jaccard threshold for near-duplicates."}
    )


@dataclass
class ScoringArguments:
    """How a model scores (instruction, answer) pairs: curation, MAGPIE's curation, rewrite and preferences."""

    SECTION = "scoring"

    curation_mode: str = field(
        default="logits",
        metadata={
            "help": "logits (one forward pass, probability-weighted rubric score), generate (the paper's reasoning "
            "+ Score: N) or likelihood (the forward model's likelihoods of the output with and without the "
            "instruction: PMI, end-of-turn, IFD; no rubric; its scores are log-probability differences, not 1-5, "
            "so set thresholds and margins on that scale)."
        },
    )
    # Default verbatim (the paper's text): measured with SmolLM2-135M-Instruct on builtin:dev (logits mode), ROC AUC
    # 0.58 verbatim vs 0.48 score-only; another 100-pair set found the opposite (0.71 vs 0.81). Both near chance for
    # a 135M judge: rerun `humpback calibrate --prompt_styles verbatim score-only` per model.
    curation_prompt: str = field(
        default="verbatim",
        metadata={
            "help": "verbatim (the paper's rubric) | score-only (without its 'reason first, then write Score:' "
            "sentence, which logits mode contradicts). Logits mode only; generate mode always uses verbatim."
        },
    )
    curation_batch_size: int = field(
        default=8, metadata={"help": "Pairs per forward pass in logits and likelihood mode."}
    )
    curation_max_new_tokens: int = field(default=256, metadata={"help": "Reasoning length (generate mode)."})
    min_score_mass: float = field(
        default=0.5,
        metadata={
            "help": "Logits mode: a score whose digit probability mass (on 1-5) is below this is not trusted: the "
            "pair stays out of A4/A5 (or the answer out of the preferences), counted as low_mass; 0 turns it off."
        },
    )
    a5_threshold: float | None = field(
        default=None,
        metadata={
            "help": "A5 threshold (preferences kto: desirable at or above it); default 4.5 in logits mode, 5 in "
            "generate mode (the paper's), a5_fraction in likelihood mode (curation) or 0 (preferences)."
        },
    )

    def __post_init__(self) -> None:
        from humpback_trl.scoring import MODES, PROMPT_STYLES

        if self.curation_mode not in MODES:
            raise UserError(f"curation_mode must be one of {MODES}, got {self.curation_mode!r}")
        if self.curation_prompt not in PROMPT_STYLES:
            raise UserError(f"curation_prompt must be one of {PROMPT_STYLES}, got {self.curation_prompt!r}")
        if not 0 <= self.min_score_mass <= 1:
            raise UserError(f"min_score_mass must be within [0, 1], got {self.min_score_mass}")


@dataclass
class JudgeMethodArguments:
    SECTION = "judging"

    judge_method: list[str] = field(
        default_factory=lambda: ["likelihood"],
        metadata={"help": "pairwise | rubric | likelihood, several allowed (one table or row each)."},
    )
    pairwise_dev: str = field(
        default=BUNDLED_PAIRWISE_DEV,
        metadata={
            "help": "Labelled pairs (prompt, chosen, rejected[, kind]) measuring the judge's accuracy: "
            "builtin:pairwise_dev or a file."
        },
    )

    def __post_init__(self) -> None:
        from humpback_trl.judges import check_methods

        self.judge_method = check_methods(self.judge_method)


@dataclass
class JudgeArguments:
    SECTION = "judging"

    judge_batch_size: int = field(default=4, metadata={"help": "Judge prompts per forward pass."})
    rubric_prompt: str = field(
        default="verbatim", metadata={"help": "Rubric of the rubric method or reward: verbatim | score-only."}
    )
    min_judge_accuracy: float = field(
        default=MIN_JUDGE_ACCURACY,
        metadata={
            "help": "A judge less accurate than this (pairwise accuracy, or AUC for a pointwise reward) is not "
            "trusted: its verdicts are no result, its reward is refused (0.5 is chance)."
        },
    )

    def __post_init__(self) -> None:
        if not 0 <= self.min_judge_accuracy <= 1:
            raise UserError(f"min_judge_accuracy must be within [0, 1], got {self.min_judge_accuracy}")


@dataclass
class ContinuedTrainingArguments(StageArguments):
    """A stage that trains an SFT adapter M_k further (DPO, KTO, GRPO)."""

    SECTION = "training stage"

    sft_adapter: str | None = field(
        default=None,
        metadata={
            "help": "The SFT adapter M_k to continue (local folder or Hub id); the reference model is a frozen copy "
            "of it. Unset: a fresh LoRA from the ModelConfig options, on the base model."
        },
    )
    sft_stage: str | None = field(
        default=None,
        metadata={
            "help": "M_k's stage name (e.g. m2): this stage is then <sft_stage>-<dpo|kto|grpo>, and the card links "
            "<hub_prefix>-<sft_stage>."
        },
    )


# ---- Commands ---------------------------------------------------------------------------------------------------


@dataclass
class InferenceModelArguments(LoadArguments, TemplateArguments):
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Base model; defaults to the base named in the adapter's config."}
    )
    adapter: str | None = field(
        default=None,
        metadata={
            "help": "LoRA adapter: a local folder or a Hub repo id. Merged into a float base (faster generation); "
            "kept beside a 4-bit one."
        },
    )
    model_revision: str | None = field(
        default=None, metadata={"help": "Hub revision (branch, tag or commit) of the base model; None is main."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run the model's own code from the Hub (tokenizer and model loaders)."}
    )

    def __post_init__(self) -> None:
        if not self.model_name_or_path and not self.adapter:
            raise UserError("Set model_name_or_path, adapter, or both.")
        # A missing local folder fails here, before the Hub client retries it as a repo id for a minute.
        if self.model_name_or_path:
            self.model_name_or_path = check_local(self.model_name_or_path, "model_name_or_path")
        if self.adapter:
            self.adapter = check_local(self.adapter, "adapter")


@dataclass
class CurationSettings(ScoringArguments):
    curation_engine: str = field(
        default="auto",
        metadata={
            "help": "auto (vllm where installed, else transformers) | transformers | vllm: what "
            "`humpback curate` and MAGPIE's curation score with (the SelfCurationCallback scores with the model in "
            "memory)."
        },
    )
    curation_prefix_cache: bool = field(
        default=True,
        metadata={
            "help": "Encode the shared prompt prefix once (the rubric in logits mode, the chat header in "
            "likelihood mode)."
        },
    )
    curation_token_budget: int = field(default=16384, metadata={"help": "Tokens per generation batch (generate mode)."})
    a4_threshold: float | None = field(
        default=None,
        metadata={
            "help": "A4 threshold: pairs scoring at least this; default 4 in logits and generate mode (the "
            "paper's), a4_fraction in likelihood mode."
        },
    )
    a4_fraction: float | None = field(
        default=None,
        metadata={
            "help": "Instead of a4_threshold: A4 is this share of the pool, the best scored (default 0.388 in "
            "likelihood mode: the paper's 195,043 of ~502k)."
        },
    )
    a5_fraction: float | None = field(
        default=None,
        metadata={
            "help": "Instead of a5_threshold: A5 is this share of the pool, the best scored (default 0.083 in "
            "likelihood mode: the paper's 41,821 of ~502k)."
        },
    )
    one_pair_per_segment: bool = field(
        default=True,
        metadata={
            "help": "A4 / A5 keep at most one pair per segment (output), the best scored; the others are "
            "counted as same_segment."
        },
    )
    instruction_checks: list[str] = field(
        default_factory=lambda: list(DEFAULT_INSTRUCTION_CHECKS),
        metadata={
            "help": f"Checks on each instruction before scoring, any of {list(INSTRUCTION_CHECKS)} (default all but "
            "unrelated), or none: a pair that fails one is not scored and stays in the scored pool with its check "
            "reason."
        },
    )
    check_min_chars: int = field(
        default=10, metadata={"help": "Check too_short: instructions shorter than this many characters."}
    )
    check_max_share: float = field(
        default=0.5,
        metadata={
            "help": "Check too_long: instructions longer than this share of their output (and than 200 "
            "characters): a restatement, which likelihood signals would reward."
        },
    )
    check_max_copied_share: float = field(
        default=0.5,
        metadata={"help": "Check copied: instructions with at least this share of their word trigrams in the output."},
    )
    check_backward_prompt: str = field(
        default=DEFAULT_BACKWARD_PROMPT,
        metadata={"help": "Check prompt_echo: the backward prompt whose wording a failed instruction repeats."},
    )
    likelihood_pmi_weight: float = field(
        default=LIKELIHOOD_WEIGHTS["pmi"], metadata={"help": "Likelihood score: weight of PMI (lp_cond - lp_uncond)."}
    )
    likelihood_end_weight: float = field(
        default=LIKELIHOOD_WEIGHTS["end"],
        metadata={"help": "Likelihood score: weight of lp_end (the end-of-turn token)."},
    )
    likelihood_cond_weight: float = field(
        default=LIKELIHOOD_WEIGHTS["cond"],
        metadata={"help": "Likelihood score: weight of lp_cond (mean log-prob per token)."},
    )
    likelihood_ifd_weight: float = field(
        default=LIKELIHOOD_WEIGHTS["ifd"],
        metadata={"help": "Likelihood score: weight of IFD (subtracted: low IFD is better)."},
    )
    likelihood_ifd: bool = field(
        default=LIKELIHOOD_WEIGHTS["with_ifd"],
        metadata={
            "help": "Likelihood mode: compute lp_prior and IFD (one more forward pass per distinct output, the output "
            "as plain text) although likelihood_ifd_weight is 0; with a non-zero weight they are always computed. "
            "Off, both columns are null."
        },
    )
    curation_shard_size: int = field(default=256, metadata={"help": "Pairs per resumable shard."})
    curation_judges: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Extra scoring models beside M_k (adapter folders, model folders or Hub ids), same rubric and "
            "mode: a second opinion against self-agreement."
        },
    )
    curation_panel: str = field(
        default="mean", metadata={"help": "How the judges' scores combine into the pair's score: mean | min."}
    )
    # On by default: it is the curation's only check from outside the pool, and 100 pairs per judge cost next to
    # nothing beside a pool of thousands (one forward pass each in logits mode).
    calibration_dev_set: str | None = field(
        default=BUNDLED_DEV_SET,
        metadata={
            "help": "Labelled dev set (instruction, output, label[, kind]) every judge also scores, for the "
            "calibration block of the report: builtin:dev, a file or a Hub id; none to skip."
        },
    )
    calibration_modes: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Modes the scoring model also calibrates in on the dev set, beside curation_mode, shown "
            "side by side (e.g. logits likelihood)."
        },
    )

    def __post_init__(self) -> None:
        from humpback_trl.scoring import MODES

        super().__post_init__()
        check_engine(self.curation_engine, "curation_engine")
        if self.curation_panel not in PANELS:
            raise UserError(f"curation_panel must be one of {PANELS}, got {self.curation_panel!r}")
        self.curation_judges = as_list(self.curation_judges)
        if self.calibration_dev_set is not None and self.calibration_dev_set.strip().lower() in OFF:
            self.calibration_dev_set = None
        self.instruction_checks = off_to_empty(self.instruction_checks)
        self.calibration_modes = off_to_empty(self.calibration_modes)
        unknown = [mode for mode in self.calibration_modes if mode not in MODES]
        if unknown:
            raise UserError(f"calibration_modes: {unknown} not among {MODES}")
        self.checks  # noqa: B018 - builds InstructionChecks, which validates the check names and limits
        self._resolve_selection()

    def _resolve_selection(self) -> None:
        """Each split's rule: the fraction or threshold set, else the mode's default (a threshold on the rubric's
        1-5 scale, the paper's share in likelihood mode)."""
        from humpback_trl.scoring import A4_THRESHOLD, DEFAULT_THRESHOLDS

        defaults = {
            "a4": (PAPER_A4_SHARE, A4_THRESHOLD),
            "a5": (PAPER_A5_SHARE, DEFAULT_THRESHOLDS[self.curation_mode]),
        }
        for split, (share, value) in defaults.items():
            fraction, threshold = getattr(self, f"{split}_fraction"), getattr(self, f"{split}_threshold")
            if fraction is not None and threshold is not None:
                raise UserError(f"Set {split}_fraction or {split}_threshold, not both")
            if fraction is not None and not 0 < fraction <= 1:
                raise UserError(f"{split}_fraction must be within (0, 1], got {fraction}")
            if fraction is None and threshold is None:
                if self.curation_mode == "likelihood":
                    setattr(self, f"{split}_fraction", share)
                else:
                    setattr(self, f"{split}_threshold", float(value))

    @property
    def rules(self) -> dict[str, tuple[str, float]]:
        """Per split: ("fraction", share of the pool) or ("threshold", minimum score)."""
        return {
            split: ("fraction", getattr(self, f"{split}_fraction"))
            if getattr(self, f"{split}_fraction") is not None
            else ("threshold", getattr(self, f"{split}_threshold"))
            for split in SPLITS
        }

    @property
    def thresholds(self) -> dict[str, float]:
        """The absolute thresholds (splits selected by a fraction have theirs from the pool: `selection`)."""
        return {split: value for split, (rule, value) in self.rules.items() if rule == "threshold"}

    @property
    def checks(self) -> InstructionChecks:
        from humpback_trl.instruction_checks import InstructionChecks

        return InstructionChecks(
            enabled=tuple(self.instruction_checks),
            min_chars=self.check_min_chars,
            max_share=self.check_max_share,
            max_copied_share=self.check_max_copied_share,
            backward_prompt=self.check_backward_prompt,
        )

    @property
    def likelihood_weights(self) -> LikelihoodWeights:
        from humpback_trl.likelihood import LikelihoodWeights

        return LikelihoodWeights(
            pmi=self.likelihood_pmi_weight,
            end=self.likelihood_end_weight,
            cond=self.likelihood_cond_weight,
            ifd=self.likelihood_ifd_weight,
            with_ifd=self.likelihood_ifd,
        )

    @property
    def mass_floor(self) -> float:
        """The digit-mass floor in force: generate mode records no mass."""
        return self.min_score_mass if self.curation_mode == "logits" else 0.0

    def enough_mass(self, mass: float | None) -> bool:
        return mass is None or mass >= self.mass_floor


@dataclass
class EvalArguments(JudgeMethodArguments, JudgeArguments, InstructionColumnArguments, InstructionLimitArguments,
                    TagArguments, EngineArguments, SamplingArguments, BatchArguments, ShardArguments,
                    LoadArguments):  # fmt: skip
    models: list[str] = field(
        default_factory=list,
        metadata={"help": "Models to compare: adapter folders (M0, M1, ...), model folders or Hub ids."},
    )
    model_names: list[str] = field(
        default_factory=list, metadata={"help": "Display names, one per model (default: the folder or repo name)."}
    )
    reference: str | None = field(
        default=None, metadata={"help": "The model (name or path) the others are compared with; default the first."}
    )
    judge: str | None = field(
        default=None,
        metadata={
            "help": "Judge model; default the base model of the compared adapters (never one of them). A compared "
            "model as judge is flagged in the report."
        },
    )
    rubric_margin: float = field(
        default=RUBRIC_MARGIN, metadata={"help": "Rubric method: a win needs a score this much above the other's."}
    )
    likelihood_margin: float = field(
        default=LIKELIHOOD_MARGIN, metadata={"help": "Likelihood method: a win needs a score this much higher."}
    )
    bootstrap_seed: int = field(default=BOOTSTRAP_SEED, metadata={"help": "Seed of the bootstrap intervals."})
    instructions: str = field(
        default=BUNDLED_EVAL_SET,
        metadata={"help": "builtin:eval (bundled), a local file or a Hub dataset with an `instruction` column."},
    )
    instructions_split: str = field(default="train", metadata={"help": "Split of a Hub dataset (alpaca_eval: eval)."})
    instructions_config: str | None = field(default=None, metadata={"help": "Config of a Hub dataset."})
    output_dir: str = field(
        default="outputs/eval", metadata={"help": "report.json / .md, winrate.png, judgments, model_outputs/."}
    )
    # Answers are compared, not sampled for variety: greedy unless asked otherwise.
    greedy: bool = default_for(SamplingArguments, "greedy", True)

    def __post_init__(self) -> None:
        from humpback_trl.judges import check_options
        from humpback_trl.model_specs import short_name

        JudgeMethodArguments.__post_init__(self)
        JudgeArguments.__post_init__(self)
        TagArguments.__post_init__(self)
        EngineArguments.__post_init__(self)
        self.models = as_list(self.models)
        if len(self.models) < 2:
            raise UserError(f"--models needs at least two models to compare, got {self.models}")
        if self.model_names and len(self.model_names) != len(self.models):
            raise UserError(
                f"--model_names gives {len(self.model_names)} names for {len(self.models)} --models; give one each"
            )
        self.model_names = list(self.model_names) or [short_name(model) for model in self.models]
        unsafe = [name for name in self.model_names if not name or "/" in name or name.startswith(".")]
        if unsafe:
            raise UserError(f"Model names name files: {unsafe} cannot be file names; set --model_names")
        if len(set(self.model_names)) != len(self.model_names):
            raise UserError(f"Model names must be distinct, got {self.model_names}; set --model_names")
        if self.reference is not None and self.reference not in (*self.model_names, *self.models):
            raise UserError(f"--reference {self.reference!r} is none of the models {self.model_names}")
        check_options(self.rubric_prompt, self.rubric_margin, self.likelihood_margin)

    @property
    def reference_name(self) -> str:
        if self.reference is None:
            return self.model_names[0]
        return (
            self.reference
            if self.reference in self.model_names
            else self.model_names[self.models.index(self.reference)]
        )


@dataclass
class PreferenceArguments(ScoringArguments, InstructionLimitArguments, TagArguments, EngineArguments,
                          SamplingArguments, BatchArguments, ShardArguments, SeedArguments, DataSplitArguments,
                          PublishArguments):  # fmt: skip
    kind: str = field(default="dpo", metadata={"help": "dpo (self-rewarding pairs) or kto (the scored pool)."})
    instructions: list[str] = field(
        default_factory=list,
        metadata={
            "help": "dpo: pair files whose instructions M_k answers (a curation's scored/a4/a5 jsonl, any pair file, "
            "a folder or a Hub id); concatenated in order."
        },
    )
    instruction_min_score: float | None = field(
        default=None, metadata={"help": "dpo: use only instructions whose pair scored at least this (e.g. 4 for A4)."}
    )
    scored_pool: str | None = field(
        default=None, metadata={"help": "kto: a scored pool (a curation's scored.jsonl, or its curated/ folder)."}
    )
    num_samples: int = field(default=4, metadata={"help": "dpo: answers sampled per instruction."})
    scorer_adapter: str | None = field(
        default=None, metadata={"help": "dpo: adapter (on the same base) that scores the answers; default M_k itself."}
    )
    margin: float = field(
        default=0.5, metadata={"help": "dpo: keep a pair only if chosen score - rejected score >= margin (and > 0)."}
    )
    low_threshold: float = field(default=LOW_THRESHOLD, metadata={"help": "kto: undesirable when score <= this."})
    output_dir: str = field(
        default="outputs/preferences", metadata={"help": "<kind>.jsonl, <kind>/ (save_to_disk), report, card."}
    )

    def __post_init__(self) -> None:
        from humpback_trl.scoring import DEFAULT_THRESHOLDS

        ScoringArguments.__post_init__(self)
        TagArguments.__post_init__(self)
        EngineArguments.__post_init__(self)
        self.instructions = as_list(self.instructions)
        checks = [
            (self.kind in PREFERENCE_KINDS, f"kind must be one of {PREFERENCE_KINDS}, got {self.kind!r}"),
            (self.kind != "dpo" or bool(self.instructions), "kind dpo needs `instructions` (pair files)"),
            (self.kind != "kto" or bool(self.scored_pool), "kind kto needs `scored_pool` (a scored.jsonl)"),
            (self.num_samples >= 2, f"num_samples must be at least 2 to form a pair, got {self.num_samples}"),
            (self.margin >= 0, f"margin must be >= 0, got {self.margin}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        if self.a5_threshold is None:
            self.a5_threshold = float(DEFAULT_THRESHOLDS[self.curation_mode])
        if self.low_threshold >= self.a5_threshold:
            raise UserError(
                f"low_threshold ({self.low_threshold}) must be below a5_threshold ({self.a5_threshold}): a pair "
                "cannot be both desirable and undesirable"
            )


@dataclass
class ChatArguments(TagArguments, EngineArguments, SamplingArguments):
    prompt: list[str] = field(default_factory=list, metadata={"help": "Prompts to answer."})
    prompts_file: str | None = field(
        default=None, metadata={"help": "A text file (one prompt a line) or jsonl with an 'instruction' field."}
    )

    def __post_init__(self) -> None:
        # A dataclass with several parents runs only the first one's __post_init__.
        TagArguments.__post_init__(self)
        EngineArguments.__post_init__(self)


@dataclass
class HumpbackSFTArguments(StageArguments, InstructionColumnArguments, TemplateArguments, DataSplitArguments,
                           HubPrefixArguments):  # fmt: skip
    data: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Pair data: local jsonl/json/parquet/csv files, save_to_disk folders, Hub dataset ids, or "
            "builtin:seed. Concatenated in order."
        },
    )
    default_source: str = field(default="seed", metadata={"help": "Source of rows whose data has no source column."})
    output_column: str = field(default="output", metadata={"help": "Column holding the output (the answer)."})
    source_column: str = field(
        default="source", metadata={"help": "Column holding each row's source (seed or augmented), for tagging."}
    )
    id_column: str = field(default="source_id", metadata={"help": "Column holding each row's unique id."})
    oasst_seed: str | None = field(
        default=None,
        metadata={
            "help": "oasst1 message export (local file or Hub id, e.g. OpenAssistant/oasst1): its first-turn "
            "rank-0 English pairs are added as seed."
        },
    )
    oasst_lang: str = field(default="en", metadata={"help": "Language of the oasst seed pairs kept."})
    seed_limit: int = field(default=3200, metadata={"help": "Cap on oasst seed pairs (paper: 3,200)."})
    direction: str = field(
        default="forward", metadata={"help": "forward: p(output|instruction); backward: p(instruction|output)."}
    )
    tagging: bool = field(default=True, metadata={"help": "Append the paper's source tags to forward instructions."})
    system_prompt: str | None = field(
        default=None, metadata={"help": "System message of every training prompt (default: the template's own)."}
    )
    backward_prompt: str = field(
        default=DEFAULT_BACKWARD_PROMPT,
        metadata={"help": "The backward model's user turn; {output} is the output to write an instruction for."},
    )
    paper_schedule: bool = field(
        default=False,
        metadata={
            "help": "The paper's schedule: lr decaying linearly to 90% of its peak (1e-5 for full fine-tuning as in "
            "the paper, 2e-4 for LoRA/QLoRA adapters), weight decay 0.1, batch 32 (8 under 3,000), steps by size."
        },
    )
    iteration: int = field(default=0, metadata={"help": "Forward iteration k: the model is M_k (M0 = seed model)."})

    def __post_init__(self) -> None:
        from humpback_trl.hub import stage_name

        self.data = as_list(self.data)
        if self.direction not in ("forward", "backward"):
            raise UserError(f"direction must be 'forward' or 'backward', got {self.direction!r}")
        if not self.data and not self.oasst_seed:
            raise UserError("No training data: set `data` (pair files or Hub ids) and/or `oasst_seed`.")
        self.stage = self.stage or stage_name(self.direction, self.iteration)


@dataclass
class PreferenceTrainingArguments(ContinuedTrainingArguments, DataSplitArguments, HubPrefixArguments):
    data: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Preference rows in TRL's format (`humpback preferences` output: dpo.jsonl / kto.jsonl or its "
            "dpo/ kto/ folder, or a Hub dataset id). Concatenated in order."
        },
    )

    def __post_init__(self) -> None:
        self.data = as_list(self.data)
        if not self.data:
            raise UserError("No preference data: set `data` (the dpo.jsonl or kto.jsonl of `humpback preferences`)")


@dataclass
class GRPOArguments(JudgeArguments, ContinuedTrainingArguments, TagArguments, DataSplitArguments, HubPrefixArguments):
    prompts: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Instruction files: a curation's scored/a4/a5 jsonl, any jsonl/json/parquet/csv with an "
            "instruction column, a folder or a Hub id. Concatenated in order."
        },
    )
    prompt_column: str = field(default="instruction", metadata={"help": "Column holding the instructions."})
    prompt_min_score: float | None = field(
        default=None,
        metadata={"help": "Use only rows whose score column is at least this (4: a scored pool's A4); unset: all."},
    )
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N distinct instructions."})
    rewards: list[str] = field(
        default_factory=lambda: ["likelihood"],
        metadata={
            "help": "Reward functions, any of rubric | likelihood | pairwise; their weights are GRPOConfig's "
            "reward_weights (in order)."
        },
    )
    judge_model: str | None = field(
        default=None,
        metadata={
            "help": "The fixed judge every reward uses: a model folder, Hub id or adapter (on its base). Default: the "
            "policy's base model. `policy` judges with the model being trained (self-judged, flagged on the card)."
        },
    )
    judge_dtype: str = field(default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU), bfloat16, float32."})
    judge_load_in_4bit: bool = field(default=False, metadata={"help": "Load the judge in 4-bit nf4."})
    pairwise_length_window: float = field(
        default=LENGTH_WINDOW,
        metadata={"help": "pairwise reward: compare two answers only when the longer is at most 1 + this times the "
                  "shorter (SERL: 20%)."},
    )  # fmt: skip
    calibration_dev_set: str = field(
        default=BUNDLED_DEV_SET,
        metadata={"help": "Labelled set (instruction, output, label) the pointwise rewards' AUC is measured on."},
    )
    pairwise_dev_set: str = field(
        default=BUNDLED_PAIRWISE_DEV,
        metadata={
            "help": "Preference pairs (prompt, chosen, rejected) the pairwise reward's accuracy is measured on, or a "
            "labelled set like calibration_dev_set (each good answer against the bad ones of its instruction)."
        },
    )
    allow_weak_judge: bool = field(
        default=False, metadata={"help": "Train with a judge under min_judge_accuracy anyway (the card records it)."}
    )
    # A reward is computed for every completion of every step: the shorter rubric and bigger batches are the cheaper.
    judge_batch_size: int = default_for(JudgeArguments, "judge_batch_size", 8)
    rubric_prompt: str = default_for(JudgeArguments, "rubric_prompt", "score-only")

    def __post_init__(self) -> None:
        from humpback_trl.rewards import REWARDS

        JudgeArguments.__post_init__(self)
        TagArguments.__post_init__(self)
        self.prompts = as_list(self.prompts)
        self.rewards = as_list(self.rewards)
        if not self.prompts:
            raise UserError("No prompts: set `prompts` (instruction files, e.g. a curation's scored.jsonl)")
        unknown = [name for name in self.rewards if name not in REWARDS]
        if unknown or not self.rewards:
            raise UserError(f"rewards: {unknown or 'none given'}; choose from {REWARDS}")
        if len(set(self.rewards)) != len(self.rewards):
            raise UserError(f"rewards: {self.rewards} names a reward twice; weigh it with reward_weights instead")
        if self.pairwise_length_window < 0:
            raise UserError(f"pairwise_length_window must be at least 0, got {self.pairwise_length_window}")


@dataclass
class CorpusConfig(DedupArguments):
    """Input and filters of the corpus step. A filter is switched off with False, None or an empty list."""

    source: str = field(
        kw_only=True,
        metadata={"help": "Local file or folder, Hub dataset id, builtin:python-docs or builtin:python-stdlib."},
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the documents (tabular inputs)."})
    id_column: str | None = field(default=None, metadata={"help": "Column with document ids; else '<name>:<row>'."})
    doc_format: str = field(
        default="text",
        metadata={"help": "Format of text-column documents and .txt files: text | markdown | html | auto."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_split: str = field(
        default="train", metadata={"help": "Hub dataset split (streamed, so no slice: cap it with max_documents)."}
    )
    max_documents: int | None = field(
        default=None,
        metadata={"help": "Read at most this many documents; a Hub dataset is streamed, so nothing more is fetched."},
    )
    max_document_chars: int = field(
        default=200_000, metadata={"help": "Longer documents are cut at the last whitespace before this length."}
    )
    min_chars: int | None = field(default=600, metadata={"help": "Drop shorter segments (paper: 600)."})
    max_chars: int | None = field(default=3000, metadata={"help": "Drop longer segments (paper: 3,000)."})
    drop_empty_headers: bool = field(default=True, metadata={"help": "Drop segments of headed docs with no header."})
    drop_all_caps_headers: bool = field(default=True, metadata={"help": "Drop segments with an ALL-CAPS header."})
    max_header_capital_ratio: float | None = field(
        default=0.5, metadata={"help": "Drop segments whose header has a larger share of capital letters."}
    )
    boilerplate_headers: list[str] = field(
        default_factory=lambda: list(DEFAULT_BOILERPLATE_HEADERS),
        metadata={"help": "Drop segments whose header contains one of these phrases (whole words, any case)."},
    )
    max_sentence_similarity: float | None = field(
        default=0.7, metadata={"help": "Drop segments with two sentences whose n-gram Jaccard exceeds this."}
    )
    sentence_ngram: int = field(default=3, metadata={"help": "Word n-gram size for the sentence similarity."})
    minhash_num_perm: int = field(default=128, metadata={"help": "MinHash permutations."})
    minhash_ngram: int = field(default=5, metadata={"help": "Word n-gram size of the MinHash shingles."})
    minhash_seed: int = field(default=1, metadata={"help": "MinHash seed; fixed so runs are reproducible."})

    def __post_init__(self) -> None:
        from humpback_trl.segmentation import DOC_FORMATS

        if self.doc_format not in DOC_FORMATS:
            raise UserError(f"doc_format must be one of {DOC_FORMATS}, got {self.doc_format!r}")
        if self.max_document_chars < 1:
            raise UserError(f"max_document_chars must be positive, got {self.max_document_chars}")
        if self.max_documents is not None and self.max_documents < 1:
            raise UserError(f"max_documents must be positive, got {self.max_documents}")
        if "[" in self.dataset_split:
            raise UserError(
                f"dataset_split={self.dataset_split!r}: Hub datasets are streamed, which takes no slice (a slice "
                "downloads the whole split first); use the plain split name and max_documents."
            )
        if self.min_chars is not None and self.max_chars is not None and self.min_chars > self.max_chars:
            raise UserError(f"min_chars ({self.min_chars}) is larger than max_chars ({self.max_chars})")


@dataclass
class CorpusOutputArguments:
    output_dir: str = field(default="outputs/corpus", metadata={"help": "Where the segments and counts are written."})


@dataclass
class AugmentArguments(EngineArguments, SamplingArguments, BatchArguments, ShardArguments, SeedArguments,
                       PublishArguments):  # fmt: skip
    corpus: str = field(
        kw_only=True,
        metadata={
            "help": "Prepared segments (`humpback corpus` output folder's dataset/, a jsonl/parquet file or a Hub id)."
        },
    )
    text_column: str = field(
        default="text", metadata={"help": "Column of the corpus segments: the output each instruction is written for."}
    )
    id_column: str = field(
        default="segment_id", metadata={"help": "Column with a unique id per segment (the shard key and source_id)."}
    )
    corpus_split: str = field(default="train", metadata={"help": "Split to read from a Hub dataset corpus."})
    max_segments: int | None = field(default=None, metadata={"help": "Use only the first N segments."})
    instructions_per_segment: int = field(
        default=1,
        metadata={
            "help": "Instructions sampled per segment (ids <segment>#1..#N when above 1); curation keeps the "
            "best scored per segment."
        },
    )
    output_dir: str = field(
        default="outputs/augment",
        metadata={"help": "candidates.jsonl, shards/ (the resumable generation), report, card."},
    )
    # An instruction is shorter than an answer; segments are many and cheap to shard.
    max_new_tokens: int = default_for(SamplingArguments, "max_new_tokens", 256)
    shard_size: int = default_for(ShardArguments, "shard_size", 256)

    def __post_init__(self) -> None:
        EngineArguments.__post_init__(self)
        if self.instructions_per_segment < 1:
            raise UserError(f"instructions_per_segment must be at least 1, got {self.instructions_per_segment}")


@dataclass
class MagpieArguments(EngineArguments, DedupArguments, BatchArguments, ShardArguments, SeedArguments,
                      PublishArguments):  # fmt: skip
    num_samples: int = field(default=1000, metadata={"help": "Conversations to generate, before filtering."})
    num_turns: int = field(default=1, metadata={"help": "User/assistant turns per conversation."})
    instruction_temperature: float = field(
        default=1.0, metadata={"help": "Temperature of the instruction step (MAGPIE: 1.0)."}
    )
    instruction_top_p: float = field(default=1.0, metadata={"help": "Top-p of the instruction step (MAGPIE: 1.0)."})
    instruction_max_new_tokens: int = field(default=128, metadata={"help": "Instruction length cap in tokens."})
    response_temperature: float = field(default=0.0, metadata={"help": "0 decodes greedily (the paper's setting)."})
    response_top_p: float = field(default=1.0, metadata={"help": "Top-p of the response step."})
    response_max_new_tokens: int = field(default=512, metadata={"help": "Response length cap in tokens."})
    system_prompts: list[str] | None = field(
        default=None, metadata={"help": "Drawn per conversation; unset keeps the template's default system block."}
    )
    system_prompt_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per system prompt; unset draws them uniformly."}
    )
    min_instruction_chars: int | None = field(default=10, metadata={"help": "Drop shorter instructions."})
    max_instruction_chars: int | None = field(default=2000, metadata={"help": "Drop longer instructions."})
    language: str | None = field(
        default=None, metadata={"help": "Keep instructions in this language: en (a heuristic) or a langdetect code."}
    )
    curate: bool = field(
        default=False,
        metadata={"help": "Score the kept pairs (curation_mode: the rubric, or likelihood) and write A4/A5."},
    )
    overwrite: bool = field(default=False, metadata={"help": "Discard the finished shards of an earlier run."})
    output_dir: str = field(
        default="outputs/magpie",
        metadata={
            "help": "magpie.jsonl, generation/shards/ (the resumable generation), curation/ (with --curate), "
            "report, card."
        },
    )

    def __post_init__(self) -> None:
        EngineArguments.__post_init__(self)
        if self.num_samples < 1 or self.num_turns < 1:
            raise UserError(f"num_samples and num_turns must be positive, got {self.num_samples}, {self.num_turns}")
        weights = self.system_prompt_weights
        if weights is not None and (not self.system_prompts or len(weights) != len(self.system_prompts)):
            raise UserError(
                f"system_prompt_weights needs one weight per system prompt: {len(weights)} weights for "
                f"{len(self.system_prompts or [])} system prompts"
            )
        if weights is not None and (min(weights) < 0 or sum(weights) <= 0):
            raise UserError(f"system_prompt_weights must be non-negative with a positive sum, got {weights}")
        low, high = self.min_instruction_chars, self.max_instruction_chars
        if low is not None and high is not None and low > high:
            raise UserError(f"min_instruction_chars ({low}) is larger than max_instruction_chars ({high})")

    @property
    def instruction_sampling(self) -> SamplingConfig:
        return _sampling(self.instruction_temperature, self.instruction_top_p, self.instruction_max_new_tokens)

    @property
    def response_sampling(self) -> SamplingConfig:
        return _sampling(self.response_temperature, self.response_top_p, self.response_max_new_tokens)


def _sampling(temperature: float, top_p: float, max_new_tokens: int) -> SamplingConfig:
    return SamplingConfig(
        temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, do_sample=temperature > 0
    )


@dataclass
class RewriteArguments(EngineArguments, SamplingArguments, BatchArguments, ShardArguments, SeedArguments,
                       PublishArguments):  # fmt: skip
    pairs: str = field(
        kw_only=True,
        metadata={
            "help": "Pairs to rewrite: a curate output folder (its <curated_split>.jsonl), a curated/ folder or a "
            "Hub dataset id (its split curated_split), or a pair file (jsonl/json/parquet/csv)."
        },
    )
    curated_split: str = field(
        default="a5",
        metadata={"help": "Split of a curated data set to rewrite: a5 (the paper's training data) | a4 | scored."},
    )
    max_pairs: int | None = field(default=None, metadata={"help": "Rewrite only the first N pairs."})
    rewrite_model: str | None = field(
        default=None,
        metadata={
            "help": "The aligned chat model that rewrites (a model, an adapter folder or a Hub id); default: the "
            "scoring model (model_name_or_path / adapter). The loop passes the run's base chat model."
        },
    )
    rewrite_prompt: str = field(
        default=DEFAULT_REWRITE_PROMPT,
        metadata={"help": "The writer's user turn, with the placeholders {instruction} and {source}."},
    )
    rewrite_system_prompt: str | None = field(
        default=None, metadata={"help": "A system turn before the prompt; none keeps the template's default."}
    )
    min_pmi: float = field(
        default=0.0,
        metadata={
            "help": "Floor of the likelihood check: mean log-probability per rewrite token with the source in the "
            "user turn minus without it (nats/token). Below it the rewrite is not explained by its source."
        },
    )
    min_lexical: float = field(
        default=0.6,
        metadata={"help": "Floor of the share of the rewrite's numbers and content words found in its source."},
    )
    max_new_numbers: int = field(
        default=0,
        metadata={"help": "Most distinct numbers a rewrite may hold that are in neither its source nor instruction."},
    )
    min_rewrite_score: float | None = field(
        default=None,
        metadata={
            "help": "Reject rewrites the curation method scores below this; none keeps every faithful rewrite "
            "(its score is still recorded and reported)."
        },
    )
    on_unfaithful: str = field(
        default="keep_original",
        metadata={"help": "What a rejected rewrite leaves in rewritten.jsonl: keep_original (the input pair) | drop."},
    )
    likelihood_batch_size: int = field(
        default=8, metadata={"help": "Rewrites per forward pass of the likelihood check."}
    )
    iteration: int | None = field(
        default=None, metadata={"help": "The loop iteration whose curated split this rewrites (names and cards)."}
    )
    output_dir: str = field(
        default="outputs/rewrite",
        metadata={"help": "rewrites.jsonl, rewritten.jsonl, accepted.jsonl, generation/ and checks/ shards, report."},
    )
    # Greedy (temperature 0) is the most faithful rewrite; pure sampling (top-p 1) when a temperature is set.
    temperature: float = default_for(SamplingArguments, "temperature", 0.0)
    top_p: float = default_for(SamplingArguments, "top_p", 1.0)

    def __post_init__(self) -> None:
        EngineArguments.__post_init__(self)
        missing = [name for name in REWRITE_PLACEHOLDERS if name not in self.rewrite_prompt]
        if missing:
            raise UserError(
                f"rewrite_prompt must hold {' and '.join(REWRITE_PLACEHOLDERS)}; it lacks {' and '.join(missing)}"
            )
        if self.on_unfaithful not in REWRITE_POLICIES:
            raise UserError(f"on_unfaithful must be one of {REWRITE_POLICIES}, got {self.on_unfaithful!r}")
        if not 0 <= self.min_lexical <= 1:
            raise UserError(f"min_lexical must be within [0, 1], got {self.min_lexical}")
        if self.max_new_numbers < 0:
            raise UserError(f"max_new_numbers must be at least 0, got {self.max_new_numbers}")
        if self.push_to_hub and not self.hub_prefix:
            raise UserError("push_to_hub needs --hub_prefix (the rewritten pairs go to <hub_prefix>-rewritten-<k>).")


@dataclass
class CurateArguments(PublishArguments):
    candidates: list[str] = field(
        default_factory=list,
        metadata={"help": "Candidate pairs: files, folders or Hub dataset ids, scored as one pool (in order)."},
    )
    candidates_split: str = field(default="train", metadata={"help": "Split to read from Hub datasets."})
    iteration: int = field(default=1, metadata={"help": "The iteration whose training data this curation selects."})
    output_dir: str = field(
        default="outputs/curate", metadata={"help": "Scored pool, a4 / a5 (jsonl and save_to_disk), report, card."}
    )

    def __post_init__(self) -> None:
        self.candidates = as_list(self.candidates)
        if not self.candidates:
            raise UserError("Set --candidates: the pool to score (files, folders or Hub dataset ids).")
        if self.push_to_hub and not self.hub_prefix:
            raise UserError("push_to_hub needs --hub_prefix (the curated splits go to <hub_prefix>-curated-<k>).")


@dataclass
class CalibrationSettings(CurationSettings):
    """The curation settings with a list of modes: each scores the dev set, one row each. Modes after the first take
    their own default selection rules unless they share its scale (`curation.side_mode_settings`)."""

    curation_mode: list[str] = field(
        default_factory=lambda: ["logits"],
        metadata={"help": "Curation modes to calibrate, one row each: any of logits, generate, likelihood."},
    )

    def __post_init__(self) -> None:
        from humpback_trl.scoring import MODES

        self.curation_mode = as_list(self.curation_mode)
        if not self.curation_mode:
            raise UserError(f"curation_mode needs at least one of {MODES}")
        for mode in self.curation_mode:
            self.for_mode(mode)

    def for_mode(self, mode: str) -> CurationSettings:
        from humpback_trl.curation import side_mode_settings

        values = {item.name: getattr(self, item.name) for item in dataclasses.fields(CurationSettings)}
        first = CurationSettings(**{**values, "curation_mode": self.curation_mode[0]})
        return first if mode == first.curation_mode else side_mode_settings(first, mode)


@dataclass
class CalibrateArguments(JudgeMethodArguments, EngineArguments, LoadArguments):
    scorer: list[str] = field(
        default_factory=list,
        metadata={"help": "Scoring models: adapter folders (M0, M1, ...), model folders, Hub ids."},
    )
    dev: str = field(default=BUNDLED_DEV_SET, metadata={"help": "Dev set: builtin:dev, a file or a Hub id."})
    dev_split: str = field(default="train", metadata={"help": "Split of a Hub dev set (oasst1: validation)."})
    dev_format: str = field(
        default="labelled",
        metadata={"help": "labelled (instruction, output, label[, kind]) | oasst (an oasst1 message export)."},
    )
    oasst_limit: int | None = field(default=None, metadata={"help": "With dev_format oasst: at most N prompts."})
    save_dev: str | None = field(default=None, metadata={"help": "Also write the dev set used to this jsonl file."})
    prompt_styles: list[str] = field(
        default_factory=list,
        metadata={"help": "Score with each of these rubric variants (verbatim, score-only); default curation_prompt."},
    )
    output_dir: str | None = field(default=None, metadata={"help": "Write calibration.json / .md and scores.jsonl."})
    judge: list[str] = field(
        default_factory=list,
        metadata={"help": "Instead of --scorer: evaluation judges (models) whose pairwise accuracy is measured."},
    )
    # Calibration measures the pairwise cue unless told otherwise; the evaluation's default is its best judge.
    judge_method: list[str] = default_for(JudgeMethodArguments, "judge_method", lambda: ["pairwise"])

    def __post_init__(self) -> None:
        from humpback_trl.scoring import PROMPT_STYLES

        self.scorer = as_list(self.scorer)
        self.judge = as_list(self.judge)
        if bool(self.scorer) == bool(self.judge):
            raise UserError(
                "humpback calibrate needs --scorer (curation: a scorer's AUC on --dev) or --judge (evaluation: a "
                "judge's pairwise accuracy on --pairwise_dev), one of the two"
            )
        JudgeMethodArguments.__post_init__(self)
        EngineArguments.__post_init__(self)
        if self.dev_format not in DEV_FORMATS:
            raise UserError(f"dev_format must be one of {DEV_FORMATS}, got {self.dev_format!r}")
        unknown = [style for style in self.prompt_styles if style not in PROMPT_STYLES]
        if unknown:
            raise UserError(f"prompt_styles: {unknown} not among {PROMPT_STYLES}")


@dataclass
class LoopArguments(PushArguments):
    output_dir: str = field(default="outputs/humpback", metadata={"help": "One folder per stage goes under it."})
    iterations: int = field(default=2, metadata={"help": "Forward iterations K; the paper's Humpback is M2."})
    accelerate_config: str = field(
        default="accelerate_configs/cpu.yaml",
        metadata={"help": "For every stage; a relative path is also looked up beside the recipes and in the project."},
    )
    num_processes: int = field(
        default=1,
        metadata={"help": "Processes per stage (accelerate launch); on several machines, all of their processes."},
    )
    num_machines: int = field(
        default=1,
        metadata={
            "help": "Machines that run the loop together: each runs the same `humpback run` with its own machine_rank; "
            "every multi-process stage spans all of them (docs/recipes.md, Several machines)."
        },
    )
    machine_rank: int = field(
        default=0,
        metadata={
            "help": "This machine's rank (0 .. num_machines-1). Machine 0 holds the output folder's lock, runs the "
            "single-process stages (corpus), writes the markers and the loop report, and tells the others each step."
        },
    )
    main_process_ip: str | None = field(
        default=None, metadata={"help": "Machine 0's address, reachable from every machine (with num_machines > 1)."}
    )
    main_process_port: int = field(
        default=29500,
        metadata={
            "help": "Port of every stage's main process on machine 0 (with num_machines > 1); the loop's machines "
            "talk on the next port."
        },
    )
    magpie: str = field(
        default="none",
        metadata={"help": "none | candidates (MAGPIE pairs join the pool and are curated) | seed (added to the seed)."},
    )
    preference: str = field(
        default="none",
        metadata={"help": "none | dpo | kto: after M_K, preference data from M_K's scores and a DPO / KTO stage."},
    )
    evaluate: bool = field(
        default=True,
        metadata={"help": "End with the eval stage (eval.yaml): every model answers one set, a judge compares them."},
    )
    model: str | None = field(
        default=None,
        metadata={"help": "Model of every stage, instead of each recipe's model_name_or_path (part of each hash)."},
    )
    backward_model: str | None = field(
        default=None, metadata={"help": "Model of the backward model and of augmentation, where it differs from model."}
    )
    magpie_model: str | None = field(
        default=None, metadata={"help": "Aligned chat model of the MAGPIE stage, where it differs from model."}
    )
    judge_model: str | None = field(
        default=None,
        metadata={
            "help": "A fixed judge for the curate stages instead of self-curation by M_{k-1} (a model, not an adapter)."
        },
    )
    ablation: str = field(
        default="none",
        metadata={
            "help": "none | random | all: M1-random trains on the seed + a random sample of iteration 1's candidates "
            "of A5's size (M1-all: + every candidate that passed the checks); the eval stage compares them with M1."
        },
    )
    rewrite: str = field(
        default="none",
        metadata={
            "help": "none | replace | add: rewrite-k (rewrite.yaml) after curate-k rewrites A5 as grounded answers; "
            "M_k trains on the rewritten pairs (replace) or on A5 and the accepted rewrites (add)."
        },
    )
    rewrite_model: str | None = field(
        default=None,
        metadata={"help": "Aligned chat model of the rewrite stages; default rewrite.yaml's, else the run's model."},
    )
    allow_weak_judge: bool = field(
        default=False,
        metadata={
            "help": "preference: grpo: train even with a reward whose judge calibrates under min_judge_accuracy "
            "(--allow_weak_judge true on the GRPO stage, part of its hash); its card and report mark the reward WEAK. "
            "Always on where the judge is a plumbing model (builtin:tiny-llama, at chance by construction)."
        },
    )
    dry_run: bool = field(
        default=False,
        metadata={
            "help": "Check every stage's recipe, the accelerate config and the inputs offline, print the commands, "
            "run nothing (humpback_trl.dry_run)."
        },
    )

    def __post_init__(self) -> None:
        from humpback_trl.ablation import ABLATIONS

        if self.iterations < 1:
            raise UserError("iterations must be at least 1")
        if self.magpie not in MAGPIE_USES:
            raise UserError(f"magpie must be one of {MAGPIE_USES}, got {self.magpie!r}")
        if self.preference not in PREFERENCES:
            raise UserError(f"preference must be one of {PREFERENCES}, got {self.preference!r}")
        if self.ablation not in ABLATIONS:
            raise UserError(f"ablation must be one of {ABLATIONS}, got {self.ablation!r}")
        if self.rewrite not in REWRITES:
            raise UserError(f"rewrite must be one of {REWRITES}, got {self.rewrite!r}")
        self.check_machines()

    def check_machines(self) -> None:
        """The machine options, checked on each machine before it joins the others (pipeline.machine_options)."""
        if self.num_machines < 1 or not 0 <= self.machine_rank < self.num_machines:
            raise UserError(
                f"machine_rank must be 0 .. num_machines-1 and num_machines at least 1, got machine_rank "
                f"{self.machine_rank} of num_machines {self.num_machines}"
            )
        if self.num_machines > 1 and not self.main_process_ip:
            raise UserError("num_machines > 1 needs main_process_ip: machine 0's address, the same on every machine")
        if self.num_processes % self.num_machines:
            raise UserError(
                f"num_processes {self.num_processes} does not split over num_machines {self.num_machines}; set it to "
                "a multiple of num_machines (the processes of all machines together)"
            )
