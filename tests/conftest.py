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
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from loop_runs import finish, humpback_run, write_recipes  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

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


# Tests that need ../shared or the real model skip without them; in CI (.ci/run) such a skip is a failure instead, so
# a run can never pass with them silently left out.
REQUIRE_SHARED = os.environ.get("HUMPBACK_REQUIRE_SHARED") == "1"
SHARED_SKIPS = ("../shared", GGUF_MODELS[SMOLLM2].distribution)
# `slow` (deselect with -m "not slow"): the real model, several processes under accelerate launch, the whole loop
# (`humpback run` / `humpback demo` as a process, the shared first_run / humpback_run) or a stage killed with
# SIGKILL and resumed. Found from the fixtures a test uses and the names and constants its body uses, so a new test
# doing the same is marked too.
SLOW_FIXTURES = frozenset({"smollm2_dir", "first_run"})
SLOW_NAMES = frozenset(
    {"launch_cpu_processes", "humpback_run", "kill_after_a_checkpoint", "run_killed_then_rerun", "SIGKILL"}
)
LOOP_COMMANDS = frozenset({"run", "demo"})


def is_slow(item: pytest.Item) -> bool:
    if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    code = getattr(getattr(item, "function", None), "__code__", None)
    if code is None:
        return False
    loop = "humpback_trl.cli" in code.co_consts and bool(LOOP_COMMANDS.intersection(code.co_consts))
    return loop or bool(SLOW_NAMES.intersection(code.co_names))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if is_slow(item):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_SHARED and report.skipped and any(needed in str(report.longrepr) for needed in SHARED_SKIPS):
        report.outcome = "failed"
        report.longrepr = f"HUMPBACK_REQUIRE_SHARED=1 turns this skip into a failure: {report.longrepr}"


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


@pytest.fixture(scope="session")
def loop_recipes(tmp_path_factory) -> Path:
    """The shortened quickstart recipes of the loop tests (tests/loop_runs.py); tests that edit one edit a copy."""
    return write_recipes(tmp_path_factory.mktemp("recipes"), tmp_path_factory.mktemp("recipe-data"))


@pytest.fixture(scope="session")
def first_run(loop_recipes, tmp_path_factory) -> tuple[Path, str]:
    """(output folder, printed output) of one whole loop on the tiny model, shared by every test that reads it. Tests
    that run a stage again work on a copy (loop_runs.copy_of_run), so the folder stays as this run left it."""
    out = tmp_path_factory.mktemp("loop") / "out"
    return out, finish(humpback_run(loop_recipes, out))


@dataclass
class HubCall:
    """One call that would have reached the Hub, with every argument it received."""

    what: str  # "adapter repo", "adapter", "model card", "data", "data card"
    repo: str
    kwargs: dict[str, Any]
    card: str | None = None  # a card's text
    data: Any = None  # the pushed Dataset or DatasetDict itself

    @property
    def rows(self) -> int | dict[str, int]:
        """A dataset's length, or a dataset dict's {split: length}."""
        return (
            {name: len(split) for name, split in self.data.items()} if hasattr(self.data, "items") else len(self.data)
        )


class Pushes(list):
    """("adapter", repo), ("model card", repo), ("data", repo, rows or splits), ("data card", repo) in call order;
    `calls` keeps every argument of every Hub call, the creation of the adapter's repo included."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[HubCall] = []

    def private(self, what: str) -> list[tuple[str, Any]]:
        """(repo, the `private` argument the Hub call received) of each call of one kind."""
        return [(call.repo, call.kwargs.get("private", "not passed")) for call in self.calls if call.what == what]


@pytest.fixture()
def recorded_pushes(monkeypatch) -> Pushes:
    """The real push calls of a stage, recorded instead of sent (an upload needs the network and a token). The
    adapter's repo is created through transformers' own `init_hf_repo`, so its `private` flag is the one it sends."""
    import transformers.trainer
    from datasets import Dataset, DatasetDict
    from huggingface_hub import DatasetCard, ModelCard
    from transformers import Trainer

    pushed = Pushes()

    def record(what: str, repo: str, kwargs: dict[str, Any], short: tuple = (), card=None, data=None) -> None:
        pushed.calls.append(HubCall(what, repo, kwargs, card, data))
        if what != "adapter repo":
            pushed.append((what, repo, *short))

    def create_repo(repo_id, **kwargs):
        record("adapter repo", repo_id, kwargs)
        return SimpleNamespace(repo_id=repo_id)

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: SimpleNamespace(create_repo=create_repo))
    monkeypatch.setattr(Trainer, "push_to_hub", lambda self, **kw: record("adapter", self.hub_model_id, kw))
    monkeypatch.setattr(
        ModelCard, "push_to_hub", lambda self, repo, **kw: record("model card", repo, kw, card=str(self))
    )
    monkeypatch.setattr(
        Dataset, "push_to_hub", lambda self, repo, **kw: record("data", repo, kw, (len(self),), data=self)
    )
    monkeypatch.setattr(
        DatasetDict, "push_to_hub", lambda self, repo, **kw: record("data", repo, kw, (sorted(self),), data=self)
    )
    monkeypatch.setattr(
        DatasetCard, "push_to_hub", lambda self, repo, **kw: record("data card", repo, kw, card=str(self))
    )
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


ADAPTER = "adapter_model.safetensors"


def largest_difference(a: Path, b: Path) -> float:
    """The largest absolute difference between two saved adapters' weights (same keys asserted)."""
    first, second = load_file(str(a / ADAPTER)), load_file(str(b / ADAPTER))
    assert first.keys() == second.keys()
    return max((first[k].float() - second[k].float()).abs().max().item() for k in first)


def skip_without_vllm() -> None:
    """The module-level guard of the vLLM test files: they skip where vLLM (or the SmolLM2 wheel) is not installed,
    unless HUMPBACK_REQUIRE_VLLM=1 (CI's vLLM environment), which turns the skip into a failure."""
    required = os.environ.get("HUMPBACK_REQUIRE_VLLM") == "1"
    for package in ("vllm", GGUF_MODELS[SMOLLM2].package):
        if importlib.util.find_spec(package) is None:
            if required:
                pytest.fail(f"HUMPBACK_REQUIRE_VLLM=1 but {package} is not installed", pytrace=False)
            pytest.skip(f"{package} is not installed", allow_module_level=True)


def random_lora_adapter(base_dir: str | Path, folder: Path) -> str:
    """A LoRA adapter on the model in `base_dir` with small random B weights (peft starts B at zero, which would
    change nothing), saved with its tokenizer as training saves one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(0)
    for name, weight in peft_model.named_parameters():
        if "lora_B" in name:
            weight.data = torch.randn(weight.shape, generator=generator) * 0.02
    peft_model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(folder)
    return str(folder)
