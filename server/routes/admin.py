"""Operator views, for admin keys only (``omniserve keys create NAME --admin``): what the
scheduler holds and why."""

from __future__ import annotations

from litestar import Controller, get

from engines.residency import SchedulerReport
from engines.scheduler import Scheduler


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
