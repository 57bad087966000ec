"""What the image-side engines share about devices: freeing memory, and measuring a loaded
pipeline. One job at a time per device is the scheduler's device turn (DeviceSerialEngine)."""

from __future__ import annotations

import gc
from typing import Any


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
