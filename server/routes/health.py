from __future__ import annotations

import msgspec
from litestar import Controller, Response, get

from server.state import AppState


class ReadyStatus(msgspec.Struct, kw_only=True):
    status: str
    models: dict[str, str]


class HealthController(Controller):
    path = ""
    tags = ["health"]

    @get("/health", summary="Liveness", exclude_from_auth=True)
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @get("/ready", summary="Readiness: 200 once the startup and pinned models are loaded, 503 otherwise")
    async def ready(self, app_state: AppState) -> Response[ReadyStatus]:
        models = {name: state.value for name, state in app_state.scheduler.residency().items()}
        if app_state.draining:
            return Response(ReadyStatus(status="draining", models=models), status_code=503)
        if not app_state.scheduler.ready():
            return Response(ReadyStatus(status="loading", models=models), status_code=503)
        return Response(ReadyStatus(status="ready", models=models), status_code=200)
