"""What the image-side engines share about devices: one lock per device, freeing memory,
and measuring a loaded pipeline."""

from __future__ import annotations

import gc
import threading
from typing import Any

_DEVICE_LOCKS: dict[str, threading.Lock] = {}
_DEVICE_LOCKS_GUARD = threading.Lock()


def device_lock(device: str) -> threading.Lock:
    """The lock every engine on ``device`` holds while it computes: one job at a time per
    device, in worker threads, so the event loop never waits on a pipeline."""
    with _DEVICE_LOCKS_GUARD:
        return _DEVICE_LOCKS.setdefault(device, threading.Lock())


def release_memory(device: str) -> None:
    # Pipelines hold reference cycles; free the weights now, not at some later collection.
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def parameter_bytes(modules: list[Any]) -> int:
    """Bytes held by the parameters and buffers of ``modules`` (torch modules)."""
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])


def pipeline_bytes(pipe: Any) -> int:
    return parameter_bytes([c for c in pipe.components.values() if hasattr(c, "parameters")])
