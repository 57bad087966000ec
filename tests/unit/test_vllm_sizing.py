from __future__ import annotations

from pathlib import Path

from engines.base import ModelKind, ModelSpec
from engines.llm.sizing import cache_options

MB = 1024 * 1024


def chat(path: Path, memory_bytes: int, **options: object) -> ModelSpec:
    return ModelSpec(name="m", kind=ModelKind.CHAT, path=str(path), memory_bytes=memory_bytes, options=options)


def test_cache_gets_the_footprint_left_after_the_weights(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"\0" * MB)
    (tmp_path / "config.json").write_text("{}")
    assert cache_options(chat(tmp_path, 5 * MB)) == {"kv_cache_memory_bytes": 4 * MB}


def test_catalog_sizing_and_undeclared_footprints_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"\0" * MB)
    assert cache_options(chat(tmp_path, 0)) == {}
    assert cache_options(chat(tmp_path, 5 * MB, gpu_memory_utilization=0.5)) == {}
    assert cache_options(chat(tmp_path, 5 * MB, kv_cache_memory_bytes=MB)) == {}
    assert cache_options(chat(tmp_path, MB // 2)) == {}  # smaller than the weights: vLLM decides
