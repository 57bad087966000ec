from __future__ import annotations

from pathlib import Path

from engines.base import ModelKind, ModelSpec
from engines.llm.sizing import cache_options
from engines.sizing import Footprint
from tests.model_files import safetensors

MB = 1024 * 1024
GB = 1024 * MB


def chat(path: Path, memory_bytes: int, **options: object) -> ModelSpec:
    return ModelSpec(name="m", kind=ModelKind.CHAT, path=str(path), memory_bytes=memory_bytes, options=options)


def planned(device: str = "cpu", total: int = 0) -> Footprint:
    return Footprint(
        device=device,
        device_total_bytes=total,
        weights_bytes=MB,
        kv_cache_bytes=4 * MB,
        max_model_len=1024,
        headroom_bytes=GB - 5 * MB,
    )


def test_cache_gets_the_footprint_left_after_the_weights(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"\0" * MB)
    (tmp_path / "config.json").write_text("{}")
    assert cache_options(chat(tmp_path, 5 * MB), None) == {"kv_cache_memory_bytes": 4 * MB}


def test_declared_cache_counts_weights_at_the_dtype_used(tmp_path: Path) -> None:
    safetensors(tmp_path / "model.safetensors", {"w": ("BF16", [MB // 2])})  # 1 MiB stored
    assert cache_options(chat(tmp_path, 5 * MB), None) == {"kv_cache_memory_bytes": 4 * MB}
    # On CPU an entry without a dtype runs in float32: its weights take twice as much.
    assert cache_options(chat(tmp_path, 5 * MB), None, on_cpu=True) == {"kv_cache_memory_bytes": 3 * MB}


def test_catalog_sizing_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"\0" * MB)
    assert cache_options(chat(tmp_path, 5 * MB, gpu_memory_utilization=0.5), None) == {}
    assert cache_options(chat(tmp_path, 5 * MB, kv_cache_memory_bytes=MB), None) == {}
    assert cache_options(chat(tmp_path, 0, kv_cache_memory_bytes=MB), planned()) == {}
    assert cache_options(chat(tmp_path, MB // 2), None) == {}  # smaller than the weights: vLLM decides


def test_undeclared_model_gets_its_planned_cache_and_context(tmp_path: Path) -> None:
    assert cache_options(chat(tmp_path, 0), planned()) == {"kv_cache_memory_bytes": 4 * MB, "max_model_len": 1024}
    # The catalog's own context stays (the plan was made for it).
    assert cache_options(chat(tmp_path, 0, max_model_len=1024), planned()) == {"kv_cache_memory_bytes": 4 * MB}
    # On a GPU vLLM also checks that total x gpu_memory_utilization is free: the planned share.
    assert cache_options(chat(tmp_path, 0), planned("cuda:0", 8 * GB)) == {
        "kv_cache_memory_bytes": 4 * MB,
        "max_model_len": 1024,
        "gpu_memory_utilization": 0.125,
    }
