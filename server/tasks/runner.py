"""Runs /v3 tasks: takes queued tasks, executes them through the scheduler, stores the
outputs (copying them to the client's bucket when ``extra.custom_storage`` asks), records
the result, and notifies webhooks (through the durable outbox).

Tasks live in the TaskStore, so the queue (``queue.py``) only carries ids. One server
(the SQLite store) uses the in-memory queue (one FIFO per key, served in turn:
``fairqueue.py``): after a restart every queued one is read back from the store, page by
page. A task stays QUEUED while its worker waits for an engine and becomes
PROCESSING when its work starts (its first progress report), so a restart, clean or not,
queues a waiting task again; one that was running is FAILED with a reason
(``recover_interrupted``), refunded, and its webhook sent.

What keeps a task from staying PROCESSING forever: each result write is retried; a task
runs under a deadline (``max_run_s``); and a sweep fails any PROCESSING task that no worker
of this process holds (the data dir lock makes this process the only runner). The sweep
also deletes finished tasks past ``retention_s``.

Stopping (``drain`` at the stop signal, then ``stop``): no new task starts; tasks waiting
for an engine are let go and stay QUEUED; running ones get until ``drain_grace_s`` after
the signal to finish, and are then failed with a reason; pending webhooks stay in the outbox.

Replicas sharing a Redis store take tasks from a shared queue (``queue_redis.py``) whose
entries are leased: the startup recovery and the sweep of PROCESSING tasks are not run
(another replica's task is PROCESSING without a worker here), and queued tasks are not
queued again at start (the queue persists). An entry taken over from a replica that died
has its task run again if it was still QUEUED; if it was PROCESSING, run again (``requeue``)
while it had fewer than 1 + ``max_task_retries`` runs, else failed with a reason, refunded,
its webhook sent. A task held unstarted at a clean stop goes back to the queue at once.
Progress is also written to the store (at most once a second per task) so every replica's
task-result shows it; a progress write that finds the task ended (cancelled on another
replica) stops its job.
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
from server.tasks.outbox import WebhookOutbox
from server.tasks.queue import LocalTaskQueue, QueuedTask, TaskQueue
from server.tasks.store import TaskStore
from server.tasks.webhooks import WebhookSender
from server.telemetry.tasks import capture_trace_context, traced_executor

log = logging.getLogger("omniserve.tasks")

INTERRUPTED_REASON = "The server restarted while this task was running; submit it again."
HELD_REASON = "The server stopped several times while this task was about to run; submit it again if it is safe."
STOPPED_REASON = "The server stopped before this task could finish; submit it again."
CANCELLED_REASON = "Cancelled by the client."
DEADLINE_REASON = "The task did not finish within the server's time limit."
UNRECORDED_REASON = "The task's result could not be recorded."
LOST_REASON = "The server lost track of this task; submit it again."
UNQUEUED_REASON = "The task could not be queued; submit it again."
# Runners that took a task, each time losing it to a crash, before it is failed instead of
# taken again: a task that kills the process must not kill every restart.
MAX_CLAIMS = 3
# Tries of one result write (a busy or full disk), with doubling waits from the first.
WRITE_TRIES = 5
WRITE_RETRY_S = 0.05
# Shared queue: the least time between two progress writes of one task to the store.
PROGRESS_WRITE_S = 1.0
# Shared queue: a worker whose task crashed (the store unreachable) waits this long before
# taking the next, so a store that is down is not spun on.
CRASH_PAUSE_S = 1.0


def died_reason(runs: int) -> str:
    return f"The replica running this task stopped; it was tried {runs} times."


class TaskOutcome(msgspec.Struct, kw_only=True):
    outputs: list[OutputFile]
    seed: int | None = None
    # Seconds of audio produced (speech), which the owner pays for; None: what was reserved.
    audio_seconds: float | None = None


class ProgressReporter:
    """Thread-safe progress for one running task, kept in memory (polled often, worth
    nothing after a restart); replicas sharing a store also get it, throttled, through
    ``on_report``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        board: dict[str, tuple[int, int]],
        task_id: str,
        on_start: Callable[[], None] | None = None,
        on_report: Callable[[tuple[int, int]], None] | None = None,
    ) -> None:
        self._loop = loop
        self._board = board
        self._task_id = task_id
        self._started = time.monotonic()
        # Called once, on the loop, at the first report: the task's work has begun.
        self._on_start = on_start
        self._on_report = on_report
        self.closed = False

    def __call__(self, fraction: float) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        elapsed = time.monotonic() - self._started
        eta = round(elapsed / fraction - elapsed) if fraction > 0 else 0
        self._loop.call_soon_threadsafe(self._report, (int(fraction * 100), eta))

    def _report(self, progress: tuple[int, int]) -> None:
        if self.closed:  # a report that arrived after the task ended
            return
        self._board[self._task_id] = progress
        if self._on_start is not None:
            on_start, self._on_start = self._on_start, None
            on_start()
        if self._on_report is not None:
            self._on_report(progress)


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


class _Run:
    """One task a worker holds: its job (the executor, as its own asyncio task, so a cancel
    stops the job and not the worker) and what happened to it."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.job: asyncio.Task[TaskOutcome] | None = None
        self.started = False  # the work began: the task is (being marked) PROCESSING
        self.start_write: asyncio.Task[None] | None = None
        self.release = False  # let go unstarted (drain): it stays QUEUED
        self.stop_reason: str | None = None  # cut off (cancel, drain): fail with this reason
        self.recorded = False  # its end is already in the store (a client's cancel)
        self.lost = False  # another replica took its queue entry over: nothing to ack
        self.progress_written = float("-inf")  # when its progress last went to the store

    @property
    def task_id(self) -> str:
        return self.task.task_id


class TaskRunner:
    def __init__(
        self,
        store: TaskStore,
        webhooks: WebhookSender | None,
        render_result: ResultRenderer,
        *,
        queue: TaskQueue | None = None,
        max_task_retries: int = 1,
        workers: int = 2,
        uploader: OutputUploader | None = None,
        billing: TaskBilling | None = None,
        max_queued: int = 10_000,
        max_queued_per_key: int = 1_000,
        max_run_s: float = 7200.0,
        drain_grace_s: float = 20.0,
        retention_s: float = 0.0,
        sweep_interval_s: float = 60.0,
    ) -> None:
        self.store = store
        self.webhooks = webhooks
        self.render_result = render_result
        self.workers = workers
        self.uploader = uploader
        self.billing = billing
        self.max_run_s = max_run_s
        self.drain_grace_s = drain_grace_s
        self.retention_s = retention_s
        self.sweep_interval_s = sweep_interval_s
        self.executors: dict[TaskType, Executor] = {}
        self.progress: dict[str, tuple[int, int]] = {}
        self.outbox = WebhookOutbox(store, webhooks, render_result)
        # Default: the one process's own queue; replicas sharing a store pass theirs.
        self._queue: TaskQueue = queue or LocalTaskQueue(max_total=max_queued, max_per_key=max_queued_per_key)
        self._queue.on_lost = self._lost
        self.max_task_retries = max_task_retries
        self._progress_writes: set[asyncio.Task[None]] = set()
        self._active: dict[str, _Run] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_deadline: float | None = None

    def register(self, task_type: TaskType, executor: Executor) -> None:
        self.executors[task_type] = traced_executor(executor)

    @property
    def draining(self) -> bool:
        return self._drain_deadline is not None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if not self._queue.shared:  # a shared queue's leases say which tasks were interrupted
            await self._recover()
        await self._queue.start()
        self._tasks = [asyncio.create_task(self._work(), name=f"task-worker-{i}") for i in range(self.workers)]
        self.outbox.start()
        self._sweeper = asyncio.create_task(self._sweep_periodically(), name="task-sweeper")

    async def _recover(self) -> None:
        failed = await self.store.recover_interrupted(
            INTERRUPTED_REASON, max_claims=MAX_CLAIMS, held_reason=HELD_REASON
        )
        if failed:
            log.warning("%d tasks were running when the server stopped; marked failed", len(failed))
        for task_id in failed:
            self._settle(task_id, succeeded=False)
        # Every queued task, however many: they were accepted, so no bound applies.
        async for task_id, owner in self.store.queued_ids():
            await self._queue.put(task_id, owner, "")

    def drain(self) -> None:
        """The stop signal arrived: start no new task. Safe to call from a signal handler."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        if self._drain_deadline is not None:
            return
        self._drain_deadline = time.monotonic() + self.drain_grace_s
        self._queue.close()
        for run in list(self._active.values()):
            if not run.started and run.job is not None:
                # Still waiting for an engine: let it go; it stays QUEUED for the next start.
                run.release = True
                run.job.cancel()

    async def stop(self) -> None:
        self._begin_drain()
        assert self._drain_deadline is not None
        jobs = [run.job for run in self._active.values() if run.job is not None]
        grace = self._drain_deadline - time.monotonic()
        if jobs and grace > 0:
            await asyncio.wait(jobs, timeout=grace)
        for run in list(self._active.values()):
            if run.job is not None and not run.job.done():
                if run.started:
                    run.stop_reason = STOPPED_REASON
                else:
                    run.release = True
                run.job.cancel()
        # The workers record what their cut-off jobs left (a short wait: the jobs are cancelled).
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)
        for worker in self._tasks:
            worker.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await asyncio.gather(*self._tasks, *([self._sweeper] if self._sweeper else []), return_exceptions=True)
        await asyncio.gather(*self._progress_writes, return_exceptions=True)
        await self._queue.stop()
        await self.outbox.stop()

    async def submit(self, task: Task) -> None:
        await self._queue.check_room(task.owner_key_id)
        capture_trace_context(task)
        if self.billing is not None:
            self.billing.reserve_task(task)
        try:
            await self.store.create(task)
        except BaseException:
            if self.billing is not None:
                self.billing.settle_task(task.task_id, succeeded=False)
            raise
        try:
            await self._queue.put(task.task_id, task.owner_key_id, task.model)
        except BaseException:
            # Recorded but not queued (a shared queue that is down): end it, so nothing waits
            # for a runner that will never come; the client gets the error.
            if await self._write(lambda: self.store.fail(task.task_id, UNQUEUED_REASON)):
                self._settle(task.task_id, succeeded=False)
                self.outbox.wake()
            raise

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
        """A task that needs no execution (webhook test mode): store it (its webhook with it)."""
        capture_trace_context(task)
        await self.store.create(task)
        self.outbox.wake()

    async def cancel(self, task: Task) -> bool:
        """End an unfinished task as FAILED (cancelled), refunded, its webhook queued; a
        running job stops at its next step. False when it had already ended."""
        if not await self._write(lambda: self.store.fail(task.task_id, CANCELLED_REASON)):
            return False
        try:
            await self._queue.discard(task.task_id, task.owner_key_id)
        except Exception as exc:  # the entry stays; the runner taking it finds the task ended
            log.warning("task %s: not taken out of the queue: %s", task.task_id, exc)
        run = self._active.get(task.task_id)
        if run is not None and run.job is not None:
            run.recorded = True
            run.stop_reason = CANCELLED_REASON
            run.job.cancel()
        self._settle(task.task_id, succeeded=False)
        self.outbox.wake()
        return True

    # -- running -----------------------------------------------------------------------------

    async def _work(self) -> None:
        while not self.draining:
            item = await self._queue.get()
            if item is None:
                return
            if self.draining:  # the task stays QUEUED in the store, for the next start or replica
                await self._queue.release(item)
                return
            try:
                await self._run(item.task_id, item)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in one task must not stop the worker
                log.exception("task %s crashed its worker", item.task_id)
                if self._queue.shared:
                    await self._queue.release(item)
                    await asyncio.sleep(CRASH_PAUSE_S)

    async def _run(self, task_id: str, item: QueuedTask | None = None) -> None:
        task = await self.store.get(task_id)
        if task is not None and task.status is TaskStatus.PROCESSING and self._queue.shared:
            # A live runner holds its entry: one that reaches us lost its runner mid-run.
            task = await self._run_again_or_fail(task)
        if task is None or task.status is not TaskStatus.QUEUED or not await self.store.claim(task_id):
            if item is not None:
                await self._queue.done(item)
            return
        run = _Run(task)
        self._active[task_id] = run
        self.progress[task_id] = (0, 0)
        reporter = ProgressReporter(
            asyncio.get_running_loop(),
            self.progress,
            task_id,
            on_start=lambda: self._mark_started(run),
            on_report=(lambda progress: self._write_progress(run, progress)) if self._queue.shared else None,
        )
        try:
            await self._execute(run, reporter)
        finally:
            reporter.closed = True
            self.progress.pop(task_id, None)
            self._active.pop(task_id, None)
        if item is None or run.lost:
            return
        if run.release:
            await self._queue.release(item)
        else:
            await self._queue.done(item)

    async def _run_again_or_fail(self, task: Task) -> Task | None:
        """A task whose replica died while running it: QUEUED again while it had fewer than
        1 + max_task_retries runs (the task as it is now), else failed with a reason (None)."""
        if task.attempts < 1 + self.max_task_retries:
            if await self.store.requeue(task.task_id):
                log.warning("task %s: its replica stopped during run %d; running it again", task.task_id, task.attempts)
            return await self.store.get(task.task_id)
        reason = died_reason(task.attempts)
        if await self._write(lambda: self.store.fail(task.task_id, reason)):
            log.warning("task %s: its replica stopped during run %d; failed", task.task_id, task.attempts)
            self._settle(task.task_id, succeeded=False)
        self.outbox.wake()
        return None

    def _lost(self, task_id: str) -> None:
        """Another replica took this task's queue entry over (this one stalled past its
        lease, or a client's cancel took it out): stop the job, recording nothing."""
        run = self._active.get(task_id)
        if run is not None and run.job is not None:
            run.recorded = run.lost = True
            run.job.cancel()

    def _write_progress(self, run: _Run, progress: tuple[int, int]) -> None:
        """Progress to the store, for every replica's task-result: at most once a second."""
        now = time.monotonic()
        if not run.started or now - run.progress_written < PROGRESS_WRITE_S:
            return
        run.progress_written = now

        async def write() -> None:
            if run.start_write is not None:
                await asyncio.gather(run.start_write, return_exceptions=True)
            try:
                if await self.store.update_progress(run.task_id, *progress):
                    return
                task = await self.store.get(run.task_id)
            except Exception as exc:  # progress is best effort; the result write retries
                log.warning("task %s: progress not written: %s", run.task_id, exc)
                return
            if task is not None and task.status.finished and run.job is not None and not run.job.done():
                # Ended elsewhere (a cancel on another replica): stop the job.
                run.recorded = True
                run.job.cancel()

        write_task = asyncio.create_task(write())
        self._progress_writes.add(write_task)
        write_task.add_done_callback(self._progress_writes.discard)

    def _mark_started(self, run: _Run) -> None:
        if run.started or run.release:
            return
        run.started = True

        async def write() -> None:
            await self._write(lambda: self.store.mark_processing(run.task_id, now_ms()))

        run.start_write = asyncio.create_task(write())

    async def _execute(self, run: _Run, reporter: ProgressReporter) -> None:
        task = run.task
        run.job = asyncio.create_task(self._job(task, reporter), name=f"task-{task.task_id}")
        audio_seconds: float | None = None
        reason: str | None = None
        outcome: TaskOutcome | None = None
        try:
            async with asyncio.timeout(self.max_run_s):
                outcome = await asyncio.shield(run.job)
        except TimeoutError:
            run.job.cancel()
            await asyncio.gather(run.job, return_exceptions=True)
            reason = DEADLINE_REASON
        except asyncio.CancelledError:
            if not run.job.cancelled():  # this worker itself was cancelled
                run.job.cancel()
                raise
            if run.release:
                await self._write(lambda: self.store.release(task.task_id))
                return
            if run.recorded:
                return
            reason = run.stop_reason or STOPPED_REASON
        except ApiError as error:
            reason = error.message
        except EngineError as error:
            # The reason as the API would word it (today: the engine's own message).
            reason = engine_api_error(error).message
        except Exception:
            log.exception("task %s failed", task.task_id)
            reason = "The engine failed while running this task."
        if run.start_write is not None:
            await asyncio.gather(run.start_write, return_exceptions=True)
        if outcome is not None:
            if not run.started:  # an executor that never reported progress
                run.started = True
                await self._write(lambda: self.store.mark_processing(task.task_id, now_ms()))
            recorded = await self._write(lambda: self.store.finish(task.task_id, outcome.outputs, outcome.seed))
            if recorded is None:
                reason = UNRECORDED_REASON
            audio_seconds = outcome.audio_seconds
        if reason is not None:
            # Unrecorded (the store keeps failing): the sweep fails it once it can write.
            await self._write(lambda: self.store.fail(task.task_id, reason))
        finished = await self.store.get(task.task_id)
        if finished is not None and finished.status.finished:
            self._settle(task.task_id, succeeded=finished.status is TaskStatus.SUCCEED, audio_seconds=audio_seconds)
        self.outbox.wake()

    async def _job(self, task: Task, reporter: ProgressReporter) -> TaskOutcome:
        outcome = await self.executors[task.task_type](task, reporter)
        if self.uploader is not None:
            # Before SUCCEED, so a client never sees a result whose copy is not there yet;
            # a failed upload fails the task, and the local files stay until cleanup.
            outcome.outputs = await self.uploader.upload(task, outcome.outputs)
        return outcome

    async def _write(self, write: Callable[[], Awaitable[bool | None]]) -> bool | None:
        """A store write, tried again with doubling waits when the store refuses it (a locked
        or full database); its answer, or None when every try failed."""
        delay = WRITE_RETRY_S
        for attempt in range(1, WRITE_TRIES + 1):
            try:
                result = await write()
                return True if result is None else result
            except Exception as exc:
                if attempt == WRITE_TRIES:
                    log.error("task store write failed %d times: %s", attempt, exc)
                    return None
                log.warning("task store write failed (try %d of %d): %s", attempt, WRITE_TRIES, exc)
                await asyncio.sleep(delay)
                delay *= 2
        return None

    def _settle(self, task_id: str, *, succeeded: bool, audio_seconds: float | None = None) -> None:
        if self.billing is None:
            return
        try:
            self.billing.settle_task(task_id, succeeded=succeeded, audio_seconds=audio_seconds)
        except Exception:  # the next start's reconcile settles it (settling is idempotent)
            log.exception("task %s could not be settled", task_id)

    # -- the sweep ---------------------------------------------------------------------------

    async def _sweep_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            try:
                await self.sweep()
            except Exception:  # the store is unwell; the next sweep tries again
                log.exception("task sweep failed")

    async def sweep(self) -> None:
        """Fail PROCESSING tasks no worker holds (their end could not be recorded), and
        delete finished tasks past the retention. With a shared queue, other replicas' tasks
        are PROCESSING without a worker here: leases decide about those."""
        if not self._queue.shared:
            for task_id in await self.store.ids_with_status(TaskStatus.PROCESSING):
                if task_id not in self._active and await self.store.fail(task_id, LOST_REASON):
                    log.warning("task %s was PROCESSING without a worker; marked failed", task_id)
                    self._settle(task_id, succeeded=False)
                    self.outbox.wake()
        if self.retention_s > 0:
            cutoff = now_ms() - int(self.retention_s * 1000)
            deleted = 0
            while (batch := await self.store.delete_finished_before(cutoff)) > 0:
                deleted += batch
                await asyncio.sleep(0)  # let requests in between batches
            if deleted:
                log.info("deleted %d finished tasks past their retention", deleted)
