"""Where each model stands (its residency state) and the scheduler's report of it."""

from __future__ import annotations

import enum

import msgspec


class Residency(enum.StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    RESIDENT = "resident"
    UNLOADING = "unloading"
    # Evicted by sleeping: off its device, weights kept in host memory, woken on next use.
    SLEEPING = "sleeping"
    FAILED = "failed"


# States in which a model holds (or is about to hold) its footprint on its device.
HOLDS_MEMORY = frozenset({Residency.LOADING, Residency.RESIDENT, Residency.UNLOADING})


class ModelResidency(msgspec.Struct, kw_only=True):
    state: Residency
    device: str
    pinned: bool
    footprint_bytes: int
    # "declared" in the catalog, "measured" at the last load, "estimated" from the model's files
    # before its first load (engines/sizing.py), or "unknown" when none of these is known.
    footprint_source: str
    idle_s: float | None  # since the last lease ended; None before the first load
    leases: int
    queue_depth: int  # requests waiting for a slot or for the model to load
    loads: int
    last_load_s: float | None
    total_load_s: float
    evictions: dict[str, int]  # by reason: "lru" (made room for another), "idle" (the TTL), "admin" (the admin API)
    sleeps: int  # evictions done by sleeping the engine rather than unloading it
    wakes: int  # leases that woke the model instead of loading it
    total_wake_s: float


class DeviceUsage(msgspec.Struct, kw_only=True):
    name: str
    total_bytes: int
    budget_bytes: int
    used_bytes: int  # footprints of the models loaded or loading there
    # Jobs of device-serial engines (diffusers) running there, and waiting for their turn.
    serial_running: int = 0
    serial_waiting: int = 0


class SchedulerReport(msgspec.Struct, kw_only=True):
    devices: list[DeviceUsage]
    models: dict[str, ModelResidency]
    idle_ttl_s: float
