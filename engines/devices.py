"""The memory the scheduler places models into: host RAM and each CUDA GPU, with a budget each.

Discovery never creates a CUDA context unless torch reports a GPU: on a CPU machine it
reads /proc/meminfo (through psutil) and nothing else.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from typing import Any

import msgspec
import psutil

log = logging.getLogger("omniserve.devices")

HOST = "cpu"

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


class DeviceMemory(msgspec.Struct, kw_only=True):
    """One device as discovered: `total_bytes` of memory, `budget_bytes` of it for models."""

    name: str  # "cpu" or "cuda:<index>"
    total_bytes: int
    budget_bytes: int


def parse_budget(value: float | str, total_bytes: int) -> int:
    """A budget setting in bytes: a number up to 1 is a share of `total_bytes` ("0.5"),
    a larger one a byte count ("8000000000"); a unit suffix reads as binary ("12GiB", "512M")."""
    text = str(value).strip()
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"a memory budget is a share (0.5), a byte count or a size such as 12GiB, not {text!r}")
    number, unit = float(match.group(1)), match.group(2)
    if unit:
        return int(number * _UNITS[unit[0].lower()])
    if number <= 1.0:
        return int(number * total_bytes)
    return int(number)


def host_total_bytes() -> int:
    return int(psutil.virtual_memory().total)


def cuda_totals() -> dict[str, int]:
    """Total memory per CUDA device; empty without torch or without a GPU."""
    if importlib.util.find_spec("torch") is None:
        return {}
    import torch

    if not torch.cuda.is_available():
        return {}
    totals = {}
    for index in range(torch.cuda.device_count()):
        _, total = torch.cuda.mem_get_info(index)
        totals[f"cuda:{index}"] = int(total)
    return totals


def discover_devices(host_budget: float | str, gpu_budget: float | str) -> list[DeviceMemory]:
    host_total = host_total_bytes()
    devices = [DeviceMemory(name=HOST, total_bytes=host_total, budget_bytes=parse_budget(host_budget, host_total))]
    for name, total in cuda_totals().items():
        devices.append(DeviceMemory(name=name, total_bytes=total, budget_bytes=parse_budget(gpu_budget, total)))
    for device in devices:
        log.info(
            "device %s: %d MiB, %d MiB for models", device.name, device.total_bytes >> 20, device.budget_bytes >> 20
        )
    return devices


def normalize_device(name: str) -> str:
    """A bare "cuda" means the first GPU; every non-CUDA device shares host memory."""
    if name == "cuda":
        return "cuda:0"
    return name if name.startswith("cuda:") else HOST


def model_device(engine: Any, default: str = HOST) -> str:
    """Where an engine keeps its weights: its own `device` (diffusers, audio engines), the
    catalog's options.device (vLLM's own argument), else `default`."""
    device = getattr(engine, "device", None) or engine.spec.options.get("device")
    return normalize_device(device) if isinstance(device, str) else default


class MemoryProbe:
    """Memory in use on one device, read before and after a load to measure its footprint.

    Host: this process's resident set (engines whose work runs in another process, such as
    vLLM's engine core, measure little; declare their footprint). GPU: used device memory,
    which counts every process on the device."""

    def __init__(self, device: str) -> None:
        self.device = device

    def used_bytes(self) -> int:
        if self.device == HOST:
            return int(psutil.Process(os.getpid()).memory_info().rss)
        import torch

        free, total = torch.cuda.mem_get_info(int(self.device.split(":")[1]))
        return int(total - free)
