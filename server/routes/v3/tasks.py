"""``GET /v3/async/task-result``: poll a task of any kind; ``POST /v3/async/task-cancel``: end one."""

from __future__ import annotations

from litestar import Controller, Request, get, post

from schemas.v3.tasks import TaskCancelBody, TaskResult
from server.accounts_hooks import Caller
from server.hosts import output_base_url
from server.tasks.results import TaskResults
from server.validation import NovitaBody, refuse_empty_body


class TaskResultController(Controller):
    path = "/v3/async"
    tags = ["v3: async tasks"]

    @get("/task-result", summary="Poll an async task", operation_id="getTaskResult")
    async def task_result(self, request: Request, task_id: str, results: TaskResults, caller: Caller) -> TaskResult:
        return await results.result(task_id, caller.key_id, output_base_url(request))

    @post(
        "/task-cancel",
        status_code=200,
        summary="Cancel an async task",
        operation_id="cancelTask",
        description=(
            "Ends a queued or running task of the caller's key as TASK_STATUS_FAILED with the reason "
            "'Cancelled by the client.'; a running task stops at its next step, its credits are refunded "
            "and its webhook is sent. A task that already ended is left as it is. Answers the task's result."
        ),
        dto=NovitaBody,
        return_dto=None,
        guards=[refuse_empty_body],
    )
    async def task_cancel(
        self, request: Request, data: TaskCancelBody, results: TaskResults, caller: Caller
    ) -> TaskResult:
        return await results.cancel(data.task_id, caller.key_id, output_base_url(request))
