"""Hub naming, model and dataset cards, and pushes.

Every artifact of a run is named from one `hub_prefix` and its stage: adapters `<prefix>-myx`, `<prefix>-m0`,
`<prefix>-m1`, ... and datasets `<prefix>-<stage>-data`. Cards name the base model, the data and the settings, and
link the repos that trained or scored each other, so a published adapter can be traced back to its data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from datasets import Dataset
from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData

from humpback_trl.paths import looks_local, public_name
from humpback_trl.stage_outputs import TRAINING
from humpback_trl.tagging import Tagging

PROJECT_TAGS = ["humpback-trl", "instruction-backtranslation", "trl", "sft"]


def stage_name(direction: str, iteration: int) -> str:
    """`myx` for the backward model, `m<k>` for the forward model of iteration k (m0 = seed model)."""
    return "myx" if direction == "backward" else f"m{iteration}"


def model_repo_id(prefix: str, stage: str) -> str:
    return f"{prefix}-{stage}"


def dataset_repo_id(prefix: str, stage: str) -> str:
    return f"{prefix}-{stage}-data"


def candidates_repo_id(prefix: str) -> str:
    return f"{prefix}-candidates"


def curated_repo_id(prefix: str, iteration: int) -> str:
    return f"{prefix}-curated-{iteration}"


def bullets(items: Mapping[str, object]) -> str:
    return "\n".join(f"- **{key}**: {value}" for key, value in items.items())


def on_hub(name: str) -> bool:
    """Whether `name` can be a Hub repo: not a built-in name, nor a path that can only be local or that exists."""
    return not (name.startswith("builtin:") or looks_local(name) or Path(name).exists())


def training_card(
    *,
    base_model: str,
    stage: str,
    tags: Sequence[str],
    summary: str,
    facts: Mapping[str, object],
    datasets: Sequence[str],
    counts: Mapping[str, int],
    settings: Mapping[str, object],
) -> ModelCard:
    """The card of every trained model: its base, what trained it (`summary`, `facts`), data counts and settings.
    `datasets`: the data its metadata links where it is on the Hub."""
    # The metadata links Hub repos only; a local model or file is named in the text, by its public name.
    card_data = ModelCardData(
        base_model=base_model if on_hub(base_model) else None,
        library_name="peft",
        tags=[*PROJECT_TAGS, *tags, f"humpback-{stage}"],
        datasets=[name for name in datasets if on_hub(name)] or None,
    )
    base_model = public_name(base_model)
    content = f"""---
{card_data.to_yaml()}
---

# humpback-trl {stage}

{summary}

{bullets({"Base model": f"`{base_model}`", **facts})}

## Data counts

{bullets({public_name(key): value for key, value in counts.items()})}

## Settings

{bullets(settings)}
"""
    return ModelCard(content)


def model_card(
    *,
    base_model: str,
    stage: str,
    direction: str,
    tagging: Tagging,
    data: Sequence[str],
    counts: Mapping[str, int],
    training_dataset: str | None,
    settings: Mapping[str, object],
) -> ModelCard:
    """The card of an SFT model: the backward model M_yx or a forward model M_k."""
    role = (
        "backward model M_yx = p(instruction | output): writes an instruction for a web document"
        if direction == "backward"
        else f"forward model {stage.upper()} = p(output | instruction)"
    )
    tags = (
        "off (backward models write untagged instructions)"
        if direction == "backward"
        else (f"on: {dict(tagging.tags)}" if tagging.enabled else "off")
    )
    beside = f"`{TRAINING.training_data}` beside this card"
    facts = {
        "Direction": direction,
        "Source tagging": tags,
        "Training data": ", ".join(f"`{public_name(name)}`" for name in data),
        "Exact training set": f"`{training_dataset}`" if training_dataset else beside,
    }
    return training_card(
        base_model=base_model,
        stage=stage,
        tags=(),
        summary=f"The {role}, trained with humpback-trl (instruction backtranslation, Li et al., ICLR 2024).",
        facts=facts,
        datasets=[training_dataset] if training_dataset and "/" in training_dataset else [],
        counts=counts,
        settings=settings,
    )


def visibility(private: bool | None) -> str:
    """How a dataset is published, stated on its card: it follows the models' `hub_private_repo`."""
    if private:
        return "private (`hub_private_repo: true`, as the models of this run)"
    return "public (`hub_private_repo` not set; set `hub_private_repo: true` to publish privately)"


def dataset_card(
    *, title: str, summary: str, counts: Mapping[str, int], links: Mapping[str, str], private: bool | None = None
) -> DatasetCard:
    card_data = DatasetCardData(tags=PROJECT_TAGS[:2], license="other")
    content = f"""---
{card_data.to_yaml()}
---

# {title}

{summary}

**Visibility on the Hub**: {visibility(private)}.

## Counts

{bullets(counts)}

## Related repositories

{bullets(links) if links else "- none"}
"""
    return DatasetCard(content)


def push_dataset(dataset: Dataset, card: DatasetCard, repo_id: str, private: bool | None) -> str:
    """Push `dataset` and its card; `private` is required so no caller forgets the models' `hub_private_repo`."""
    dataset.push_to_hub(repo_id, private=private)
    card.push_to_hub(repo_id, repo_type="dataset")
    return repo_id
