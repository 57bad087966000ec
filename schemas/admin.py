"""The admin API's bodies (server/routes/admin.py): the catalog's models and where each stands."""

from __future__ import annotations

import msgspec

from engines.base import ModelKind
from engines.residency import Residency


class AdminModel(msgspec.Struct, kw_only=True):
    name: str
    aliases: list[str]
    kind: ModelKind
    engine: str
    path: str
    device: str
    state: Residency
    # Never evicted nor unloaded for idleness; the catalog's pin until changed at runtime.
    pinned: bool
    footprint_bytes: int
    # "declared" in the catalog, "measured" at the last load, or "unknown" before the first.
    footprint_source: str
    leases: int  # requests running on it
    queue_depth: int  # requests waiting for a slot or for it to load


class AdminModelList(msgspec.Struct, kw_only=True):
    models: list[AdminModel]


class AdminAdapterBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A LoRA adapter to serve (PUT /admin/loras/{name})."""

    model: str  # the chat model it adapts: a catalog name or alias
    path: str  # a local PEFT folder (adapter_config.json, adapter_model.safetensors)


class AdminAdapter(msgspec.Struct, kw_only=True):
    name: str
    model: str  # the catalog name of the model it adapts
    path: str


class AdminAdapterList(msgspec.Struct, kw_only=True):
    adapters: list[AdminAdapter]


class ClusterReplica(msgspec.Struct, kw_only=True):
    id: str
    url: str  # where the other replicas and clients reach it (cluster.advertise_url)
    models: list[str]  # the catalog models it runs (canonical names)
    started_at: float  # Unix time
    # Seconds since its last heartbeat, by this server's clock against the replica's own.
    heartbeat_age_s: float
    this_server: bool


class ClusterView(msgspec.Struct, kw_only=True):
    replicas: list[ClusterReplica]
