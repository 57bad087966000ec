from __future__ import annotations

import msgspec
from litestar import Controller, Response, get

from engines.scheduler import Scheduler
from server.hosts import PROBE_OPT


class ReadyStatus(msgspec.Struct, kw_only=True):
    status: str
    models: dict[str, str]


class Readiness:
    """Whether this process should get traffic: not while draining after a stop signal, nor
    before its startup models are loaded."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.draining = False

    def status(self) -> tuple[ReadyStatus, int]:
        models = {name: state.value for name, state in self.scheduler.residency().items()}
        if self.draining:
            return ReadyStatus(status="draining", models=models), 503
        if not self.scheduler.ready():
            return ReadyStatus(status="loading", models=models), 503
        return ReadyStatus(status="ready", models=models), 200


class HealthController(Controller):
    path = ""
    tags = ["health"]

    @get("/health", summary="Liveness", operation_id="health", opt={PROBE_OPT: True})
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @get(
        "/ready",
        summary="Readiness: 200 once the startup and pinned models are loaded, 503 otherwise",
        operation_id="ready",
        opt={PROBE_OPT: True},
    )
    async def ready(self, readiness: Readiness) -> Response[ReadyStatus]:
        status, code = readiness.status()
        return Response(status, status_code=code)
