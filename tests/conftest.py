"""Shared fixtures: no network, tiny tokenizers and models built in-process, the real tokenizers in ../shared."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import importlib.util  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from humpback_trl.builtin_models import GGUF_MODELS, SMOLLM2, cache_root, gguf_model_path  # noqa: E402
from humpback_trl.tiny import build_model, build_tokenizer  # noqa: E402

torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[1]
SHARED_TOKENIZERS = ROOT.parent / "shared" / "tokenizers"
REAL_TOKENIZERS = ["qwen2.5-instruct", "llama-3.2-instruct", "mistral-instruct-v0.3", "gemma-2-it", "smollm2-instruct"]
NO_SHARED = "../shared/tokenizers not found (the real tokenizer test data lives beside the checkout)"

TEXTS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun.",
    "Explain how photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "Write a short poem about the sea, the wind and a small boat coming home at night.",
    "To bake bread, mix flour, water, salt and yeast, knead the dough, let it rise, then bake it.",
    "Python lists are ordered and mutable; tuples are ordered and immutable; sets hold unique items.",
    "Score: 1 2 3 4 5. The answer is complete, clear and helpful. Below is an instruction from a user.",
    "What is the capital of France? Paris is the capital and largest city of France.",
] * 3


def real_tokenizer_path(name: str) -> Path:
    if not SHARED_TOKENIZERS.is_dir():
        pytest.skip(NO_SHARED)
    return SHARED_TOKENIZERS / name


# The real model is converted once into the user's cache, the one `humpback demo` uses, and reused across sessions:
# the conversion is deterministic and takes half a minute. Taken before the fixture below redirects HUMPBACK_CACHE.
REAL_MODEL_CACHE = cache_root()


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """The built-in tiny model is built into a per-session cache, never into the user's home."""
    os.environ["HUMPBACK_CACHE"] = str(tmp_path_factory.mktemp("humpback-cache"))


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct as a local folder (`builtin:smollm2-135m-instruct`), converted at most once."""
    spec = GGUF_MODELS[SMOLLM2]
    if importlib.util.find_spec(spec.package) is None:
        pytest.skip(f"the real-model tests need the package {spec.distribution}: {spec.install_hint()}")
    return gguf_model_path(SMOLLM2, REAL_MODEL_CACHE)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer(TEXTS, vocab_size=400)


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    return build_model(tiny_tokenizer, seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A saved tiny model folder, as `model_name_or_path` for the entry points."""
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_tokenizer.save_pretrained(path)
    build_model(tiny_tokenizer, seed=0).save_pretrained(path)
    return path


@pytest.fixture()
def recorded_pushes(monkeypatch) -> list[tuple]:
    """The real push calls of a training stage, recorded instead of sent (an upload needs the network and a token):
    ("adapter", repo), ("model card", repo), ("data", repo, rows), ("data card", repo), in call order."""
    from datasets import Dataset
    from huggingface_hub import DatasetCard, ModelCard
    from transformers import Trainer

    pushed: list[tuple] = []
    # The real init_hf_repo creates the repo and records the id the Hub returns.
    monkeypatch.setattr(
        Trainer, "init_hf_repo", lambda self, token=None: setattr(self, "hub_model_id", self.args.hub_model_id)
    )
    monkeypatch.setattr(Trainer, "push_to_hub", lambda self, **kw: pushed.append(("adapter", self.hub_model_id)))
    monkeypatch.setattr(ModelCard, "push_to_hub", lambda self, repo, **kw: pushed.append(("model card", repo)))
    monkeypatch.setattr(Dataset, "push_to_hub", lambda self, repo, **kw: pushed.append(("data", repo, len(self))))
    monkeypatch.setattr(DatasetCard, "push_to_hub", lambda self, repo, **kw: pushed.append(("data card", repo)))
    return pushed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_cpu_processes(*args: str, num_processes: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """`accelerate launch` with the project's cpu.yaml: N gloo processes (`--cpu` would start only one)."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "accelerate_configs/cpu.yaml"),
        "--num_processes", str(num_processes), "--main_process_port", str(free_port()), *args,
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        stdout, stderr = process.communicate(timeout=30)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def kill_tree(pid: int) -> None:
    """Kill a process and all its descendants: torchrun starts its workers in sessions of their own, so killing the
    launcher's process group would leave them running (and holding the output pipes open)."""
    import psutil

    parent = psutil.Process(pid)
    for process in [*parent.children(recursive=True), parent]:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
