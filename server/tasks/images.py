"""Transitional: the speech and video task modules still take these two names from here until
they submit through `server/tasks/submission.py` like the image tasks (this module then goes)."""

from __future__ import annotations

from schemas.v3.common import CommonExtra
from server.tasks.models import Task, TaskStatus, now_ms
from server.tasks.runner import TaskRunner
from server.tasks.submission import TaskSubmission


async def enqueue(runner: TaskRunner, task: Task, extra: CommonExtra) -> None:
    test_mode = extra.webhook.test_mode if extra.webhook else None
    if test_mode is not None and test_mode.enabled:
        task.status = TaskStatus(test_mode.return_task_status)
        task.execute_time_ms = task.complete_time_ms = now_ms()
        if task.status is TaskStatus.FAILED:
            task.reason = "Webhook test mode: a mock failure."
        await runner.record_finished(task)
    else:
        await runner.submit(task)


class ImageTasks:
    def __init__(self, submission: TaskSubmission) -> None:
        self.submission = submission

    async def _check_extra(self, extra: CommonExtra) -> None:
        await self.submission.check_extra(extra)
