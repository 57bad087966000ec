"""The steps every /v3 submission shares, whatever the capability: the checks of ``extra``,
the Task record, and the queue (or, in webhook test mode, an immediate mock result)."""

from __future__ import annotations

from schemas.errors import ApiError, ErrorCode
from schemas.v3.common import CommonExtra
from server.cluster import ClusterCatalog, cluster_refusal
from server.netguard import check_public_url_async
from server.tasks.models import Task, TaskStatus, TaskType, now_ms
from server.tasks.runner import TaskRunner


class TaskSubmission:
    def __init__(
        self,
        runner: TaskRunner,
        *,
        allow_private_urls: bool,
        nsfw_detection: bool,
        cluster: ClusterCatalog | None = None,
    ) -> None:
        self.runner = runner
        # Who runs which model: a task is queued only for a model some live replica runs.
        self.cluster = cluster
        self.allow_private_urls = allow_private_urls
        # Whether a safety classifier is configured (tasks.safety_model).
        self.nsfw_detection = nsfw_detection

    async def check_extra(self, extra: CommonExtra) -> None:
        """400 for an ``extra`` this server cannot honour: a private webhook target, custom
        storage without credentials, NSFW detection without a classifier."""
        if extra.webhook is not None:
            await check_public_url_async(
                extra.webhook.url, allow_private=self.allow_private_urls, param="extra.webhook.url"
            )
        await self.runner.check_custom_storage(extra.custom_storage)
        if extra.enable_nsfw_detection and not self.nsfw_detection:
            raise ApiError(
                ErrorCode.INVALID_REQUEST_BODY,
                "NSFW detection is not configured on this server.",
                param="extra.enable_nsfw_detection",
            )

    async def submit(
        self,
        task_type: TaskType,
        model: str,
        raw: bytes,
        extra: CommonExtra,
        owner: str | None,
        *,
        seed: int | None = None,
    ) -> Task:
        """Record a validated request as a task and queue it. The raw body is stored: the
        executor decodes it again, so a task survives a restart without a second schema."""
        task = Task(
            task_type=task_type,
            model=model,
            request=raw,
            owner_key_id=owner,
            seed=seed,
            webhook_url=extra.webhook.url if extra.webhook else None,
        )
        test_mode = extra.webhook.test_mode if extra.webhook else None
        if test_mode is not None and test_mode.enabled:
            # A mock event of the chosen status; no inference runs.
            task.status = TaskStatus(test_mode.return_task_status)
            task.execute_time_ms = task.complete_time_ms = now_ms()
            if task.status is TaskStatus.FAILED:
                task.reason = "Webhook test mode: a mock failure."
            await self.runner.record_finished(task)
        else:
            if self.cluster is not None and not self.cluster.serving(model):
                # Queued, it would wait for a replica nobody runs (cluster_refusal says why 503).
                raise cluster_refusal(self.cluster, model, param=None)
            await self.runner.submit(task)
        return task
