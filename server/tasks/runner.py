"""Runs /v3 tasks: takes queued tasks, executes them through the scheduler, stores the
outputs (copying them to the client's bucket when ``extra.custom_storage`` asks), records
the result, and notifies webhooks.

Tasks live in the TaskStore, so the in-memory queue only carries ids: after a restart
the queued ones are re-read from the store, and the ones that were running are FAILED
with a reason (``recover_interrupted``), never left PROCESSING.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec

from engines.errors import EngineError
from schemas.errors import ApiError, ErrorCode
from schemas.v3.common import CustomStorage
from server.errors import engine_api_error
from server.tasks.models import OutputFile, Task, TaskStatus, TaskType, now_ms
from server.tasks.store import TaskStore
from server.tasks.webhooks import WebhookSender
from server.telemetry.tasks import capture_trace_context, traced_executor

log = logging.getLogger("omniserve.tasks")

INTERRUPTED_REASON = "The server restarted while this task was running; submit it again."


class TaskOutcome(msgspec.Struct, kw_only=True):
    outputs: list[OutputFile]
    seed: int | None = None
    # Seconds of audio produced (speech), which the owner pays for; None: what was reserved.
    audio_seconds: float | None = None


class ProgressReporter:
    """Thread-safe progress for one running task, kept in memory (polled often, worth
    nothing after a restart, so never written to the store)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, board: dict[str, tuple[int, int]], task_id: str) -> None:
        self._loop = loop
        self._board = board
        self._task_id = task_id
        self._started = time.monotonic()

    def __call__(self, fraction: float) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        elapsed = time.monotonic() - self._started
        eta = round(elapsed / fraction - elapsed) if fraction > 0 else 0
        self._loop.call_soon_threadsafe(self._board.__setitem__, self._task_id, (int(fraction * 100), eta))


Executor = Callable[[Task, ProgressReporter], Awaitable[TaskOutcome]]
# A finished task's whole webhook body (Novita's envelope, or a vendor API's own shape).
ResultRenderer = Callable[[Task], bytes]


class OutputUploader(Protocol):
    """Copies a finished task's outputs to the storage its ``extra.custom_storage`` names."""

    async def check(self, custom_storage: CustomStorage) -> None:
        """At submission: raise ApiError (400) unless the upload can be attempted."""

    async def upload(self, task: Task, outputs: list[OutputFile]) -> list[OutputFile]:
        """The outputs with their remote copies recorded; ApiError with a reason on failure."""


class TaskBilling(Protocol):
    """Charges a task's owner for its outputs: at submission, settled when it ends."""

    def reserve_task(self, task: Task) -> None:
        """Raise ApiError (e.g. BILLING_BALANCE_NOT_ENOUGH) to refuse the task."""

    def settle_task(self, task_id: str, *, succeeded: bool, audio_seconds: float | None = None) -> None:
        """Keep the credits (those of ``audio_seconds`` when given), or refund them; idempotent."""


class TaskRunner:
    def __init__(
        self,
        store: TaskStore,
        webhooks: WebhookSender,
        render_result: ResultRenderer,
        *,
        workers: int = 2,
        uploader: OutputUploader | None = None,
        billing: TaskBilling | None = None,
    ) -> None:
        self.store = store
        self.webhooks = webhooks
        self.render_result = render_result
        self.workers = workers
        self.uploader = uploader
        self.billing = billing
        self.executors: dict[TaskType, Executor] = {}
        self.progress: dict[str, tuple[int, int]] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._deliveries: set[asyncio.Task[None]] = set()

    def register(self, task_type: TaskType, executor: Executor) -> None:
        self.executors[task_type] = traced_executor(executor)

    async def start(self) -> None:
        failed = await self.store.recover_interrupted(INTERRUPTED_REASON)
        if failed:
            log.warning("%d tasks were running when the server stopped; marked failed", failed)
        for task in await self.store.next_queued(10_000):
            self._queue.put_nowait(task.task_id)
        self._tasks = [asyncio.create_task(self._work(), name=f"task-worker-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        for worker in self._tasks:
            worker.cancel()
        await asyncio.gather(*self._tasks, *self._deliveries, return_exceptions=True)

    async def submit(self, task: Task) -> None:
        capture_trace_context(task)
        if self.billing is not None:
            self.billing.reserve_task(task)
        try:
            await self.store.create(task)
        except BaseException:
            if self.billing is not None:
                self.billing.settle_task(task.task_id, succeeded=False)
            raise
        self._queue.put_nowait(task.task_id)

    async def check_custom_storage(self, custom_storage: CustomStorage | None) -> None:
        """At submission, for every task kind: 400 unless the outputs can go where
        ``extra.custom_storage`` asks (the upload itself runs after the executor)."""
        if custom_storage is None or custom_storage.aws_s3 is None:
            return
        if self.uploader is None:
            raise ApiError(
                ErrorCode.INVALID_REQUEST_BODY,
                "custom_storage is not available on this server.",
                param="extra.custom_storage.aws_s3",
            )
        await self.uploader.check(custom_storage)

    async def record_finished(self, task: Task) -> None:
        """A task that needs no execution (webhook test mode): store it and notify."""
        capture_trace_context(task)
        await self.store.create(task)
        self._notify(task.task_id)

    async def _work(self) -> None:
        while True:
            task_id = await self._queue.get()
            try:
                await self._run(task_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in one task must not stop the worker
                log.exception("task %s crashed its worker", task_id)

    async def _run(self, task_id: str) -> None:
        task = await self.store.get(task_id)
        if task is None or task.status is not TaskStatus.QUEUED:
            return
        await self.store.mark_processing(task_id, now_ms())
        self.progress[task_id] = (0, 0)
        reporter = ProgressReporter(asyncio.get_running_loop(), self.progress, task_id)
        audio_seconds: float | None = None
        try:
            outcome = await self.executors[task.task_type](task, reporter)
            if self.uploader is not None:
                # Before SUCCEED, so a client never sees a result whose copy is not there yet;
                # a failed upload fails the task, and the local files stay until cleanup.
                outcome.outputs = await self.uploader.upload(task, outcome.outputs)
        except asyncio.CancelledError:
            # Shutdown mid-task: the restart recovery marks it failed with a reason.
            raise
        except ApiError as error:
            await self.store.fail(task_id, error.message)
        except EngineError as error:
            # The reason as the API would word it (today: the engine's own message).
            await self.store.fail(task_id, engine_api_error(error).message)
        except Exception:
            log.exception("task %s failed", task_id)
            await self.store.fail(task_id, "The engine failed while running this task.")
        else:
            await self.store.finish(task_id, outcome.outputs, outcome.seed)
            audio_seconds = outcome.audio_seconds
        finally:
            self.progress.pop(task_id, None)
        if self.billing is not None:
            finished = await self.store.get(task_id)
            succeeded = finished is not None and finished.status is TaskStatus.SUCCEED
            self.billing.settle_task(task_id, succeeded=succeeded, audio_seconds=audio_seconds)
        self._notify(task_id)

    def _notify(self, task_id: str) -> None:
        delivery = asyncio.create_task(self._deliver(task_id))
        self._deliveries.add(delivery)
        delivery.add_done_callback(self._deliveries.discard)

    async def _deliver(self, task_id: str) -> None:
        task = await self.store.get(task_id)
        if task is None or not task.webhook_url:
            return
        body = self.render_result(task)
        await self.webhooks.deliver(task.webhook_url, body, trace_context=task.trace_context, wrap=False)
