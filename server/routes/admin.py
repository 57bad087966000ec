"""Operator views behind the API key guard: what the scheduler holds and why."""

from __future__ import annotations

from litestar import Controller, get

from engines.residency import SchedulerReport
from server.state import AppState


class AdminController(Controller):
    path = "/admin"
    tags = ["admin"]

    @get("/scheduler", summary="Residency per model, device budgets, evictions and load times")
    async def scheduler(self, app_state: AppState) -> SchedulerReport:
        return app_state.scheduler.report()
