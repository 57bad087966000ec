"""Task runners of several replicas on one task store and one Redis queue (a real
redis-server): a task runs where its model is served, a replica that dies mid-task has it
run again elsewhere and then failed with a reason, refunded once, a clean stop hands waiting
tasks to another replica, and progress and cancels reach across replicas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from server.keystore import replica_id
from server.tasks.models import Task, TaskStatus, TaskType
from server.tasks.queue import LocalTaskQueue
from server.tasks.queue_redis import RedisTaskQueue
from server.tasks.runner import CANCELLED_REASON, ProgressReporter, TaskOutcome, TaskRunner, died_reason
from server.tasks.store import SqliteTaskStore
from tests.redis_server import RedisServer, redis_server
from tests.unit import test_task_runner
from tests.unit.conftest import make_state
from tests.unit.test_task_runner import FREE, running, submit

WAIT_S = 15.0
HEARTBEAT_S = 0.1
LEASE_S = 0.4


@pytest.fixture(scope="module")
def redis_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


class Billing:
    """Counts every settle the runners make."""

    def __init__(self) -> None:
        self.settled: list[tuple[str, bool]] = []

    def reserve_task(self, task: Task) -> None:
        return None

    def settle_task(self, task_id: str, *, succeeded: bool, audio_seconds: float | None = None) -> None:
        self.settled.append((task_id, succeeded))


class Executor:
    """A fake engine run: reports progress (its work begins) unless told to wait for an engine
    first, then waits for its gate."""

    def __init__(self, *, report: bool = True, opened: bool = False) -> None:
        self.report = report
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.gate = asyncio.Event()
        if opened:
            self.gate.set()

    async def __call__(self, task: Task, progress: ProgressReporter) -> TaskOutcome:
        self.started.append(task.task_id)
        if self.report:
            progress(0.5)
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(task.task_id)
            raise
        return TaskOutcome(outputs=[])


class Cluster:
    """Runners of several replicas in this process: one store, one Redis, one billing."""

    def __init__(self, server: RedisServer, store: SqliteTaskStore) -> None:
        self.server = server
        self.store = store
        self.billing = Billing()
        self.runners: list[TaskRunner] = []
        self.killed: list[TaskRunner] = []

    async def replica(
        self, name: str, models: list[str], executor: Executor, *, heartbeat_s: float = HEARTBEAT_S
    ) -> TaskRunner:
        queue = RedisTaskQueue(
            self.server.url,
            replica=name,
            models=models,
            max_total=100,
            max_per_key=100,
            heartbeat_s=heartbeat_s,
            lease_s=LEASE_S * heartbeat_s / HEARTBEAT_S,
            timeout_s=1.0,
            retry_after_s=0.5,
            block_s=0.1,
        )
        runner = TaskRunner(
            self.store, None, lambda task: b"", queue=queue, billing=self.billing, workers=1, drain_grace_s=0.2
        )
        runner.register(TaskType.TXT_TO_IMG, executor)
        await runner.start()
        self.runners.append(runner)
        return runner

    async def kill(self, runner: TaskRunner) -> None:
        """As if the process died: its workers and heartbeats stop, nothing is written,
        released or acked."""
        queue = runner._queue
        assert isinstance(queue, RedisTaskQueue)
        queue.close()
        assert queue._heartbeat is not None
        for loop in (*runner._tasks, queue._heartbeat):
            loop.cancel()
        await asyncio.gather(*runner._tasks, queue._heartbeat, return_exceptions=True)
        self.killed.append(runner)

    async def submit(self, runner: TaskRunner, model: str) -> Task:
        task = Task(task_type=TaskType.TXT_TO_IMG, model=model, request=b"{}")
        await runner.submit(task)
        return task

    async def status(self, task_id: str) -> Task:
        task = await self.store.get(task_id)
        assert task is not None
        return task


@pytest.fixture
async def cluster(redis_instance: RedisServer, tmp_path: Path) -> AsyncIterator[Cluster]:
    redis_instance.flush()
    made = Cluster(redis_instance, SqliteTaskStore(tmp_path / "tasks.sqlite3"))
    yield made
    for runner in made.runners:
        if runner not in made.killed:
            await runner.stop()
    made.store.close()


async def until(check: Callable[[], Awaitable[bool] | bool], timeout_s: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            result = check()
            if result if isinstance(result, bool) else await result:
                return
            await asyncio.sleep(0.02)


async def has_status(cluster: Cluster, task_id: str, status: TaskStatus) -> bool:
    return (await cluster.status(task_id)).status is status


async def test_a_task_runs_on_a_replica_that_serves_its_model(cluster: Cluster) -> None:
    runs_a, runs_b = Executor(opened=True), Executor(opened=True)
    replica_a = await cluster.replica("replica-a", ["model-a"], runs_a)
    replica_b = await cluster.replica("replica-b", ["model-b"], runs_b)
    for_a = await cluster.submit(replica_b, "model-a")  # any replica accepts any task
    for_b = await cluster.submit(replica_a, "model-b")
    await until(lambda: has_status(cluster, for_a.task_id, TaskStatus.SUCCEED))
    await until(lambda: has_status(cluster, for_b.task_id, TaskStatus.SUCCEED))
    assert (runs_a.started, runs_b.started) == ([for_a.task_id], [for_b.task_id])
    assert sorted(cluster.billing.settled) == sorted([(for_a.task_id, True), (for_b.task_id, True)])


async def test_a_replica_dying_mid_task_has_it_run_again_then_failed_and_refunded_once(cluster: Cluster) -> None:
    runs = {"first": Executor(), "second": Executor()}
    replicas = {name: await cluster.replica(name, ["m"], executor) for name, executor in runs.items()}
    task = await cluster.submit(replicas["first"], "m")
    await until(lambda: any(executor.started for executor in runs.values()))
    dying = next(name for name, executor in runs.items() if executor.started)
    survivor = "second" if dying == "first" else "first"
    await until(lambda: has_status(cluster, task.task_id, TaskStatus.PROCESSING))
    await cluster.kill(replicas[dying])

    # After the lease, the survivor takes the entry over and runs the task again.
    await until(lambda: bool(runs[survivor].started))
    await until(lambda: has_status(cluster, task.task_id, TaskStatus.PROCESSING))
    assert (await cluster.status(task.task_id)).attempts == 2
    assert cluster.billing.settled == []
    await cluster.kill(replicas[survivor])

    # A third replica finds it PROCESSING with its runs spent: failed, not run a third time.
    third = Executor(opened=True)
    await cluster.replica("third", ["m"], third)
    await until(lambda: has_status(cluster, task.task_id, TaskStatus.FAILED))
    failed = await cluster.status(task.task_id)
    assert failed.reason == died_reason(2) == "The replica running this task stopped; it was tried 2 times."
    assert third.started == []
    await until(lambda: asyncio.sleep(0.5, True))  # a few more takeover rounds: nothing more happens
    assert cluster.billing.settled == [(task.task_id, False)]
    assert await cluster.store.ids_with_status(TaskStatus.QUEUED) == []
    assert await cluster.store.ids_with_status(TaskStatus.PROCESSING) == []
    queue = cluster.runners[-1]._queue
    assert isinstance(queue, RedisTaskQueue)
    assert await queue.counts() == {}  # acked: the entry left the queue


async def test_a_clean_stop_hands_a_waiting_task_to_another_replica(cluster: Cluster) -> None:
    waiting = Executor(report=False)  # waits for an engine: the task's work never begins
    stopping = await cluster.replica("stopping", ["m"], waiting)
    task = await cluster.submit(stopping, "m")
    await until(lambda: bool(waiting.started))
    taker = Executor(opened=True)
    # Its takeovers are rarely due: the task reaches it by a plain read, at once.
    await cluster.replica("taker", ["m"], taker, heartbeat_s=30.0)
    await stopping.stop()
    await until(lambda: has_status(cluster, task.task_id, TaskStatus.SUCCEED))
    assert taker.started == [task.task_id]
    assert (await cluster.status(task.task_id)).attempts == 1  # the stopped replica's claim given back
    assert cluster.billing.settled == [(task.task_id, True)]


async def test_progress_reaches_the_store_and_a_cancel_elsewhere_stops_the_job(cluster: Cluster) -> None:
    running = Executor()
    runner = await cluster.replica("running", ["m"], running)
    elsewhere = await cluster.replica("elsewhere", [], Executor())  # serves nothing, accepts all
    task = await cluster.submit(elsewhere, "m")
    await until(lambda: bool(running.started))
    await until(lambda: _progress_is(cluster, task.task_id, 50))
    assert await elsewhere.cancel(await cluster.status(task.task_id))
    await until(lambda: bool(running.cancelled))
    failed = await cluster.status(task.task_id)
    assert (failed.status, failed.reason) == (TaskStatus.FAILED, CANCELLED_REASON)
    await until(lambda: task.task_id not in runner.progress)
    assert cluster.billing.settled == [(task.task_id, False)]


async def _progress_is(cluster: Cluster, task_id: str, percent: int) -> bool:
    return (await cluster.status(task_id)).progress_percent == percent


async def test_the_app_queues_in_redis_the_models_this_replica_serves(
    redis_instance: RedisServer, tmp_path: Path
) -> None:
    redis_instance.flush()
    assert isinstance(make_state(tmp_path / "alone").task_runner._queue, LocalTaskQueue)
    everything = make_state(tmp_path / "all", store_url=redis_instance.url)
    queue = everything.task_runner._queue
    assert isinstance(queue, RedisTaskQueue)
    assert sorted(queue.models) == ["fake-chat", "fake-embed", "fake-rerank", "fake-sd"]
    assert queue.replica == replica_id(tmp_path / "all")
    state = make_state(
        tmp_path / "some", store_url=redis_instance.url, cluster={"serve": ["fake-chat-alias", "fake-sd"]}, **FREE
    )
    queue = state.task_runner._queue
    assert isinstance(queue, RedisTaskQueue) and queue.models == ["fake-chat", "fake-sd"]
    _, key = state.keystore.create("a")
    async with running(state) as client:
        task_id = await submit(client, key)
        await test_task_runner.until(lambda: test_task_runner._is(client, key, task_id, "TASK_STATUS_SUCCEED"))
    assert await queue.counts() == {}


async def test_requeue_takes_back_only_a_processing_task_and_resets_its_progress(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "tasks.sqlite3")
    task = Task(task_type=TaskType.TXT_TO_IMG, model="m", request=b"{}")
    await store.create(task)
    assert not await store.requeue(task.task_id)  # QUEUED: nothing to take back
    assert await store.claim(task.task_id)
    assert await store.mark_processing(task.task_id, 123)
    assert await store.update_progress(task.task_id, 40, 9)
    assert await store.requeue(task.task_id)
    again = await store.get(task.task_id)
    assert again is not None
    assert (again.status, again.progress_percent, again.eta, again.execute_time_ms) == (TaskStatus.QUEUED, 0, 0, None)
    assert again.attempts == 1  # the runs still count
    assert await store.fail(task.task_id, "x")
    assert not await store.requeue(task.task_id)  # finished is final
    assert not await store.requeue("no-such-task")
    store.close()
