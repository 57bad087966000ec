"""``GET /v3/async/task-result``: poll a task of any kind."""

from __future__ import annotations

from litestar import Controller, Request, get

from schemas.v3.tasks import TaskResult
from server.accounts_hooks import Caller
from server.hosts import output_base_url
from server.tasks.results import TaskResults


class TaskResultController(Controller):
    path = "/v3/async"
    tags = ["v3: async tasks"]

    @get("/task-result", summary="Poll an async task", operation_id="getTaskResult")
    async def task_result(self, request: Request, task_id: str, results: TaskResults, caller: Caller) -> TaskResult:
        return await results.result(task_id, caller.key_id, output_base_url(request))
