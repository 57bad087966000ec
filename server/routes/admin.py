"""Operator routes, for admin keys only (``omniserve keys create NAME --admin``): what the
scheduler holds and why, and the catalog's models loaded, unloaded, pinned and unpinned at
runtime.

The model actions are idempotent PUTs and DELETEs on two sets, the loaded models and the
pinned ones; each answers the model as it stands afterwards. Names may hold slashes, so the
name is the last segment of each path. What they change lasts until the process ends.

LoRA adapters of chat models are a third set, by adapter name: PUT serves one (its base model
and folder in the body), DELETE stops serving it. They are not kept across restarts either.
"""

from __future__ import annotations

import time

from litestar import Controller, delete, get, put
from litestar.openapi.datastructures import ResponseSpec

from engines.base import AdapterEngine, TextAdapter
from engines.errors import ModelNotFound
from engines.residency import SchedulerReport
from engines.scheduler import Scheduler
from schemas.admin import (
    AdminAdapter,
    AdminAdapterBody,
    AdminAdapterList,
    AdminModel,
    AdminModelList,
    ClusterReplica,
    ClusterView,
)
from server.cluster import ClusterCatalog
from server.errors import bad_request

# The conflicts the model actions answer with (the envelope is added with the other errors).
_CONFLICT = {
    409: ResponseSpec(
        data_container=None,
        description="The model is in use or between states (MODEL_IN_USE), or does not fit (MODEL_DOES_NOT_FIT)",
    )
}


def _admin_model(scheduler: Scheduler, name: str, report: SchedulerReport | None = None) -> AdminModel:
    spec = scheduler.spec(name)
    residency = (report or scheduler.report()).models[spec.name]
    return AdminModel(
        name=spec.name,
        aliases=list(spec.aliases),
        kind=spec.kind,
        engine=spec.engine,
        path=spec.path,
        device=residency.device,
        state=residency.state,
        pinned=residency.pinned,
        footprint_bytes=residency.footprint_bytes,
        footprint_source=residency.footprint_source,
        leases=residency.leases,
        queue_depth=residency.queue_depth,
    )


def _adapters(scheduler: Scheduler) -> list[AdminAdapter]:
    return [
        AdminAdapter(name=adapter.name, model=engine.spec.name, path=adapter.path)
        for engine in scheduler.registry
        if isinstance(engine, AdapterEngine)
        for adapter in engine.adapters()
    ]


def _adapter(scheduler: Scheduler, name: str) -> AdminAdapter:
    for adapter in _adapters(scheduler):
        if adapter.name == name:
            return adapter
    raise ModelNotFound(name)


class AdminController(Controller):
    path = "/admin"
    tags = ["admin"]

    @get(
        "/scheduler",
        summary="Residency per model, device budgets, evictions and load times",
        operation_id="schedulerReport",
    )
    async def scheduler(self, scheduler: Scheduler) -> SchedulerReport:
        return scheduler.report()

    @get("/cluster", summary="The live replicas, where they are reached and what they run", operation_id="clusterView")
    async def cluster(self, cluster: ClusterCatalog) -> ClusterView:
        now = time.time()
        return ClusterView(
            replicas=[
                ClusterReplica(
                    id=replica.id,
                    url=replica.url,
                    models=list(replica.models),
                    started_at=replica.started_at,
                    heartbeat_age_s=round(max(now - replica.heartbeat_at, 0.0), 3),
                    this_server=replica.id == cluster.here.id,
                )
                for replica in cluster.replicas()
            ]
        )

    @get("/models", summary="The catalog's models: where each lives and stands", operation_id="listAdminModels")
    async def list_models(self, scheduler: Scheduler) -> AdminModelList:
        report = scheduler.report()
        models = [_admin_model(scheduler, engine.spec.name, report) for engine in scheduler.registry]
        return AdminModelList(models=models)

    @get("/models/{name:path}", summary="One catalog model, by name or alias", operation_id="getAdminModel")
    async def get_model(self, name: str, scheduler: Scheduler) -> AdminModel:
        return _admin_model(scheduler, name.lstrip("/"))

    @put(
        "/loaded/{name:path}",
        summary="Load a model now, evicting idle unpinned models (least recently used first) for room",
        operation_id="loadModel",
        responses=_CONFLICT,
    )
    async def load_model(self, name: str, scheduler: Scheduler) -> AdminModel:
        return _admin_model(scheduler, await scheduler.load_model(name.lstrip("/")))

    @delete(
        "/loaded/{name:path}",
        summary="Unload a model (and unpin it); refused while requests use it",
        operation_id="unloadModel",
        status_code=200,
        responses=_CONFLICT,
    )
    async def unload_model(self, name: str, scheduler: Scheduler) -> AdminModel:
        return _admin_model(scheduler, await scheduler.unload_model(name.lstrip("/")))

    @put(
        "/pinned/{name:path}",
        summary="Pin a model: load it, then never evict it or unload it for idleness",
        operation_id="pinModel",
        responses=_CONFLICT,
    )
    async def pin_model(self, name: str, scheduler: Scheduler) -> AdminModel:
        return _admin_model(scheduler, await scheduler.pin_model(name.lstrip("/")))

    @delete(
        "/pinned/{name:path}",
        summary="Unpin a model; it stays loaded until evicted",
        operation_id="unpinModel",
        status_code=200,
    )
    async def unpin_model(self, name: str, scheduler: Scheduler) -> AdminModel:
        return _admin_model(scheduler, scheduler.unpin_model(name.lstrip("/")))

    @get("/loras", summary="The LoRA adapters served, each with the model it adapts", operation_id="listAdapters")
    async def list_adapters(self, scheduler: Scheduler) -> AdminAdapterList:
        return AdminAdapterList(adapters=_adapters(scheduler))

    @put(
        "/loras/{name:path}",
        summary="Serve a chat model's LoRA adapter under a model name of its own, until the process ends",
        operation_id="addAdapter",
        responses={409: ResponseSpec(data_container=None, description="The name is taken (MODEL_IN_USE)")},
    )
    async def add_adapter(self, name: str, data: AdminAdapterBody, scheduler: Scheduler) -> AdminAdapter:
        name = name.lstrip("/")
        if not name.strip():
            raise bad_request("An adapter needs a name.", "name")
        await scheduler.add_adapter(data.model, TextAdapter(name=name, path=data.path))
        return _adapter(scheduler, name)

    @delete(
        "/loras/{name:path}",
        summary="Stop serving a LoRA adapter (requests running with it finish)",
        operation_id="removeAdapter",
        status_code=200,
    )
    async def remove_adapter(self, name: str, scheduler: Scheduler) -> AdminAdapter:
        adapter = _adapter(scheduler, name.lstrip("/"))
        scheduler.remove_adapter(adapter.name)
        return adapter
