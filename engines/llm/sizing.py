"""vLLM's cache size from the footprint the catalog declares for the scheduler.

The scheduler places a model by its `memory_bytes`; vLLM, left alone, sizes its KV cache
from the whole device (`gpu_memory_utilization`, 0.9 by default) and would overrun the
budget the scheduler planned with. So, unless the catalog sizes the cache itself, the
cache gets what the declared footprint leaves after the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engines.base import ModelSpec

# Options by which the catalog sizes the cache itself.
_CACHE_OPTIONS = frozenset({"kv_cache_memory_bytes", "gpu_memory_utilization"})


def weight_bytes(path: str) -> int:
    """Size of the model's weight files (safetensors or PyTorch bins) in a local folder."""
    folder = Path(path)
    if not folder.is_dir():
        return 0
    files = [*folder.glob("*.safetensors"), *folder.glob("*.bin")]
    return sum(file.stat().st_size for file in files)


def cache_options(spec: ModelSpec) -> dict[str, Any]:
    """`kv_cache_memory_bytes` = declared footprint - weights, when the catalog declares a
    footprint and sets neither cache option; empty otherwise. Activations are not counted:
    a footprint should leave them some headroom."""
    if spec.memory_bytes <= 0 or _CACHE_OPTIONS & spec.options.keys():
        return {}
    cache = spec.memory_bytes - weight_bytes(spec.path)
    return {"kv_cache_memory_bytes": cache} if cache > 0 else {}
