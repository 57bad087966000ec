"""One contract for every task store: SQLite in the data dir, and Redis shared by replicas.

Each test runs against both, the Redis one on a real redis-server on a loopback port. A
"replica" is a second store object on the same SQLite file or the same Redis. Times that
matter (an outbox lease running out, a retention cutoff) are passed in, never waited for.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from server.keystore import StoreUnavailable
from server.settings import Settings
from server.tasks.models import OutputFile, Task, TaskStatus, TaskType, now_ms
from server.tasks.store import SqliteTaskStore, TaskStore, open_task_store
from server.tasks.store_redis import RedisTaskStore
from tests.redis_server import RedisServer, redis_server

OpenStore = Callable[[], TaskStore]
LEASE_MS = 30_000


def _task(**fields: object) -> Task:
    defaults: dict[str, object] = {
        "task_type": TaskType.TXT_TO_IMG,
        "model": "tiny-sd",
        "request": b'{"request": {"prompt": "a cat"}}',
    }
    return Task(**{**defaults, **fields})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def redis_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenStore]:
    """Opens a store object on this test's store (call it again for another replica's)."""
    opened: list[TaskStore] = []
    server: RedisServer | None = None
    if request.param == "redis":
        server = request.getfixturevalue("redis_instance")
        server.flush()

    def open_one() -> TaskStore:
        if server is None:
            store: TaskStore = SqliteTaskStore(tmp_path / "tasks.sqlite3")
        else:
            store = RedisTaskStore(server.url, timeout_s=2.0, retry_after_s=1.0)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


async def test_create_get_round_trip_keeps_every_field_and_the_request_bytes(open_store: OpenStore) -> None:
    store = open_store()
    task = _task(
        request=bytes(range(256)) + b"\x00\xff\xfe not utf-8",
        owner_key_id="k1",
        webhook_url="https://example.com/hook",
        trace_context={"traceparent": "00-abc-def-01"},
        url_ttl_s=600,
        seed=7,
        task_type=TaskType.TXT_TO_VIDEO,
    )
    bare = _task(owner_key_id="", webhook_url=None)  # "" and None stay apart
    for each in (task, bare):
        await store.create(each)
    assert await store.get(task.task_id) == task
    assert await store.get(bare.task_id) == bare
    assert await open_store().get(task.task_id) == task  # another replica reads it as written
    assert await store.get("no-such-task") is None
    assert await store.status_of(task.task_id) is TaskStatus.QUEUED
    assert await store.status_of("no-such-task") is None


async def test_transitions_and_finished_tasks_are_final(open_store: OpenStore) -> None:
    store = open_store()
    task = _task(trace_context={"traceparent": "t"})
    await store.create(task)
    assert not await store.update_progress(task.task_id, 50, 3)  # not running yet
    assert await store.claim(task.task_id)  # a runner took it: still QUEUED until its work starts
    assert (await store.status_of(task.task_id)) is TaskStatus.QUEUED
    assert await store.mark_processing(task.task_id, 1234)
    assert not await store.mark_processing(task.task_id, 1235)  # a second runner loses
    assert not await store.claim(task.task_id)
    assert await store.update_progress(task.task_id, 150, -1)
    running = await store.get(task.task_id)
    assert running is not None
    assert (running.status, running.progress_percent, running.eta) == (TaskStatus.PROCESSING, 100, 0)
    assert (running.execute_time_ms, running.attempts) == (1234, 1)

    outputs = [OutputFile(kind="image", key=f"{task.task_id}/0.png", media_type="png", nsfw={"valid": True})]
    assert await store.finish(task.task_id, outputs, seed=42)
    assert not await store.fail(task.task_id, "late failure")
    assert not await store.finish(task.task_id, [], seed=1)
    assert not await store.update_progress(task.task_id, 10, 5)
    assert not await store.requeue(task.task_id)
    done = await store.get(task.task_id)
    assert done is not None
    assert done.status is TaskStatus.SUCCEED
    assert (done.outputs, done.seed, done.reason, done.progress_percent, done.eta) == (outputs, 42, "", 100, 0)
    assert done.trace_context == {"traceparent": "t"}
    assert done.complete_time_ms is not None

    failed = _task(seed=3)
    await store.create(failed)
    assert await store.fail(failed.task_id, "engine exploded")
    assert not await store.finish(failed.task_id, outputs, seed=1)
    assert not await store.mark_processing(failed.task_id, 1)
    assert not await store.claim(failed.task_id)
    after = await store.get(failed.task_id)
    assert after is not None
    assert (after.status, after.reason, after.outputs, after.seed) == (TaskStatus.FAILED, "engine exploded", [], 3)
    assert after.complete_time_ms is not None

    unseeded = _task(seed=9)
    await store.create(unseeded)
    assert await store.finish(unseeded.task_id, [], seed=None)
    finished = await store.get(unseeded.task_id)
    assert finished is not None and finished.seed is None
    assert not await store.claim("no-such-task")
    assert not await store.requeue("no-such-task")
    assert not await store.mark_processing("no-such-task", 1)
    assert not await store.update_progress("no-such-task", 1, 1)
    assert not await store.finish("no-such-task", [], seed=None)
    assert not await store.fail("no-such-task", "x")
    assert await store.get("no-such-task") is None  # no write made one up


async def test_only_one_of_two_replicas_starts_a_task(open_store: OpenStore) -> None:
    first, second = open_store(), open_store()
    tasks = [_task() for _ in range(10)]
    for task in tasks:
        await first.create(task)
    for task in tasks:
        won = await asyncio.gather(first.mark_processing(task.task_id, 1), second.mark_processing(task.task_id, 2))
        assert sorted(won) == [False, True]


async def test_requeue_puts_a_running_task_back_in_the_queue(open_store: OpenStore) -> None:
    store = open_store()
    older, task = _task(submit_time_ms=1), _task(submit_time_ms=2)
    for each in (older, task):
        await store.create(each)
    assert not await store.requeue(task.task_id)  # QUEUED already
    await store.claim(task.task_id)
    await store.mark_processing(task.task_id, 500)
    await store.update_progress(task.task_id, 60, 12)
    assert [t.task_id for t in await store.next_queued(10)] == [older.task_id]
    assert await store.requeue(task.task_id)
    assert not await store.requeue(task.task_id)  # a repeated requeue changes nothing
    again = await store.get(task.task_id)
    assert again is not None
    assert (again.status, again.progress_percent, again.eta) == (TaskStatus.QUEUED, 0, 0)
    assert (again.execute_time_ms, again.attempts) == (None, 1)
    assert [t.task_id for t in await store.next_queued(10)] == [older.task_id, task.task_id]
    assert [task_id async for task_id, _ in store.queued_ids()] == [older.task_id, task.task_id]
    assert await store.ids_with_status(TaskStatus.PROCESSING) == []
    assert await store.mark_processing(task.task_id, 900)  # and it runs again
    assert await store.finish(task.task_id, [], seed=None)
    assert not await store.requeue(task.task_id)


async def test_recover_interrupted_fails_only_processing(open_store: OpenStore) -> None:
    store = open_store()
    queued, running, done = _task(submit_time_ms=1), _task(submit_time_ms=2), _task(submit_time_ms=3)
    for task in (queued, running, done):
        await store.create(task)
    await store.mark_processing(running.task_id, 10)
    await store.mark_processing(done.task_id, 10)
    await store.finish(done.task_id, [], seed=None)

    restarted = open_store()
    assert await restarted.recover_interrupted("interrupted by a restart") == [running.task_id]
    assert await restarted.recover_interrupted("again") == []
    states = {t.task_id: t for t in [await restarted.get(x.task_id) for x in (queued, running, done)] if t}
    assert states[queued.task_id].status is TaskStatus.QUEUED
    assert states[running.task_id].status is TaskStatus.FAILED
    assert states[running.task_id].reason == "interrupted by a restart"
    assert states[done.task_id].status is TaskStatus.SUCCEED
    assert [t.task_id for t in await restarted.next_queued(10)] == [queued.task_id]
    assert [t.task_id for t in await restarted.list_by_status(TaskStatus.FAILED, 10)] == [running.task_id]
    assert await restarted.ids_with_status(TaskStatus.SUCCEED) == [done.task_id]


async def test_a_task_claimed_by_every_crashed_runner_is_failed_not_retaken(open_store: OpenStore) -> None:
    store = open_store()
    held, released, fresh = _task(submit_time_ms=1), _task(submit_time_ms=2), _task(submit_time_ms=3)
    for task in (held, released, fresh):
        await store.create(task)
    await store.release(fresh.task_id)  # nothing to give back: the count stays at 0
    for _ in range(3):
        await store.claim(held.task_id)  # taken, and each time the process died
        await store.claim(released.task_id)
        await store.release(released.task_id)  # a clean stop gives the claim back
    assert await store.recover_interrupted("x", max_claims=3, held_reason="held") == [held.task_id]
    failed = await store.get(held.task_id)
    assert failed is not None and (failed.status, failed.reason) == (TaskStatus.FAILED, "held")
    assert [task_id async for task_id, _ in store.queued_ids()] == [released.task_id, fresh.task_id]
    untouched = await store.get(fresh.task_id)
    assert untouched is not None and untouched.attempts == 0


async def test_lists_are_oldest_first_with_a_limit(open_store: OpenStore) -> None:
    store = open_store()
    tasks = [_task(submit_time_ms=t) for t in (30, 10, 20)]
    for task in tasks:
        await store.create(task)
    assert [t.submit_time_ms for t in await store.next_queued(2)] == [10, 20]
    assert [t.submit_time_ms for t in await store.list_by_status(TaskStatus.QUEUED, 10)] == [10, 20, 30]
    assert await store.list_by_status(TaskStatus.PROCESSING, 10) == []


async def test_queued_ids_pages_through_every_queued_task(open_store: OpenStore) -> None:
    store = open_store()
    tasks = [_task(submit_time_ms=i // 3, owner_key_id=f"k{i % 2}" if i % 5 else None) for i in range(25)]
    created = [*reversed(tasks[:12]), *tasks[12:]]  # some out of order, ties in time too
    for task in created:
        await store.create(task)
    await store.fail(tasks[4].task_id, "gone")
    await store.mark_processing(tasks[9].task_id, 1)
    # By submit time, then in creation order.
    queued = sorted(
        (t for t in tasks if t not in (tasks[4], tasks[9])), key=lambda t: (t.submit_time_ms, created.index(t))
    )
    expected = [(t.task_id, t.owner_key_id) for t in queued]
    assert [pair async for pair in store.queued_ids(page=4)] == expected
    assert [pair async for pair in store.queued_ids(page=23)] == expected  # a last page that is full
    assert [t.task_id for t in await store.next_queued(30)] == [t.task_id for t in queued]

    # Tasks leaving the queue between pages do not shift the pages after them.
    seen: list[str] = []
    async for task_id, _ in store.queued_ids(page=3):
        seen.append(task_id)
        if len(seen) == 3:  # a page read, the next one not yet
            for pair in expected[:6]:
                await store.fail(pair[0], "cancelled")
    assert seen == [pair[0] for pair in expected[:3] + expected[6:]]


async def test_ending_a_task_with_a_webhook_queues_its_delivery_in_the_same_write(open_store: OpenStore) -> None:
    store = open_store()
    hooked, silent, failing = _task(webhook_url="https://h/1"), _task(), _task(webhook_url="https://h/3")
    test_mode = _task(
        webhook_url="https://h/4", status=TaskStatus.SUCCEED, progress_percent=100, complete_time_ms=now_ms()
    )
    for task in (hooked, silent, failing, test_mode):
        await store.create(task)
    assert await store.pending_webhooks() == 1  # created finished: its webhook is due at once
    await store.finish(hooked.task_id, [], seed=None)
    await store.finish(silent.task_id, [], seed=None)
    await store.fail(failing.task_id, "no")
    assert await store.pending_webhooks() == 3
    due = await store.due_webhooks(now_ms() + 1, 10, lease_ms=0)  # taken, and due again at once
    assert sorted((p.task_id, p.url, p.attempts) for p in due) == sorted(
        [(hooked.task_id, "https://h/1", 0), (failing.task_id, "https://h/3", 0), (test_mode.task_id, "https://h/4", 0)]
    )
    await store.webhook_retry(hooked.task_id, 1, now_ms() + 60_000)
    assert sorted(p.task_id for p in await store.due_webhooks(now_ms() + 1, 10, lease_ms=0)) == sorted(
        [failing.task_id, test_mode.task_id]
    )
    retried = await store.due_webhooks(now_ms() + 61_000, 10, lease_ms=0)
    assert {p.task_id: p.attempts for p in retried}[hooked.task_id] == 1
    assert await store.next_webhook_due() is not None
    for task in (failing, test_mode, hooked):
        await store.webhook_done(task.task_id)
    await store.webhook_done(hooked.task_id)  # twice: nothing left to remove
    await store.webhook_retry(hooked.task_id, 2, 0)  # a retry of a delivery that is done adds nothing
    assert await store.pending_webhooks() == 0
    assert await store.next_webhook_due() is None
    assert await store.due_webhooks(now_ms() + 61_000, 10, LEASE_MS) == []


async def test_a_due_webhook_is_leased_to_one_dispatcher_until_its_lease_ends(open_store: OpenStore) -> None:
    first, second = open_store(), open_store()
    tasks = [_task(webhook_url=f"https://h/{i}") for i in range(20)]
    for task in tasks:
        await first.create(task)
        await first.fail(task.task_id, "no")
    now = now_ms() + 1

    # Both replicas ask at once, one delivery at a time: each delivery goes to exactly one.
    taken = await asyncio.gather(*(store.due_webhooks(now, 1, LEASE_MS) for store in (first, second) * 15))
    ids = [pending.task_id for batch in taken for pending in batch]
    assert sorted(ids) == sorted(task.task_id for task in tasks)
    assert await first.due_webhooks(now, 100, LEASE_MS) == []
    assert await second.due_webhooks(now + LEASE_MS - 1, 100, LEASE_MS) == []  # within the lease
    assert await second.next_webhook_due() == now + LEASE_MS
    assert await first.pending_webhooks() == 20  # leased, not gone

    # The dispatchers died without a word: after the lease every delivery is due again, once.
    again = await second.due_webhooks(now + LEASE_MS, 100, LEASE_MS)
    assert sorted(p.task_id for p in again) == sorted(ids)
    assert all(p.attempts == 0 for p in again)
    assert await first.due_webhooks(now + LEASE_MS, 100, LEASE_MS) == []

    # An outcome written by the dispatcher holding the lease ends it.
    await second.webhook_retry(tasks[0].task_id, 1, now + LEASE_MS + 5)
    await second.webhook_done(tasks[1].task_id)
    later = await first.due_webhooks(now + LEASE_MS + 5, 100, LEASE_MS)
    assert [(p.task_id, p.attempts) for p in later] == [(tasks[0].task_id, 1)]


async def test_retention_deletes_old_finished_tasks_in_batches_with_their_deliveries(open_store: OpenStore) -> None:
    store = open_store()
    old = [_task(status=TaskStatus.SUCCEED, complete_time_ms=1_000 + i, webhook_url=f"https://h/{i}") for i in range(5)]
    recent = _task(status=TaskStatus.FAILED, complete_time_ms=5_000, reason="no")
    old_queued, old_running, finished_now = _task(submit_time_ms=1), _task(submit_time_ms=1), _task()
    for task in (*old, recent, old_queued, old_running, finished_now):
        await store.create(task)
    await store.mark_processing(old_running.task_id, 2)
    await store.finish(finished_now.task_id, [], seed=None)
    assert await store.pending_webhooks() == 5
    assert await store.status_counts() == {TaskStatus.SUCCEED: 6, TaskStatus.FAILED: 1, TaskStatus.QUEUED: 1,
                                           TaskStatus.PROCESSING: 1}  # fmt: skip

    assert [await store.delete_finished_before(5_000, limit=2) for _ in range(4)] == [2, 2, 1, 0]
    for task in old:
        assert await store.get(task.task_id) is None
    for task in (recent, old_queued, old_running, finished_now):  # too recent, or never finished
        assert await store.get(task.task_id) is not None
    assert await store.pending_webhooks() == 0
    assert await store.ids_with_status(TaskStatus.SUCCEED) == [finished_now.task_id]
    assert await store.status_counts() == {TaskStatus.SUCCEED: 1, TaskStatus.FAILED: 1, TaskStatus.QUEUED: 1,
                                           TaskStatus.PROCESSING: 1}  # fmt: skip
    assert await store.delete_finished_before(now_ms() + 1) == 2
    assert await store.status_counts() == {TaskStatus.QUEUED: 1, TaskStatus.PROCESSING: 1}


async def test_the_settings_pick_the_store(tmp_path: Path, redis_instance: RedisServer) -> None:
    local = open_task_store(Settings(data_dir=str(tmp_path)))
    shared = open_task_store(Settings(data_dir=str(tmp_path), store_url=redis_instance.url))
    try:
        assert isinstance(local, SqliteTaskStore) and local.path == tmp_path / "tasks.sqlite3"
        assert isinstance(shared, RedisTaskStore)
    finally:
        await local.close()
        await shared.close()


async def test_a_stopped_redis_is_unavailable_and_the_store_recovers(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        store = RedisTaskStore(server.url, timeout_s=0.5, retry_after_s=0.2)
        task = _task()
        await store.create(task)
        server.stop()
        with pytest.raises(StoreUnavailable) as down:
            await store.get(task.task_id)
        assert down.value.status == 503 and down.value.retry_after is not None
        assert "task store" in down.value.message
        with pytest.raises(StoreUnavailable):  # within the retry period: at once
            await store.finish(task.task_id, [], seed=None)
        with pytest.raises(StoreUnavailable):
            await store.due_webhooks(now_ms(), 10, LEASE_MS)
        with pytest.raises(StoreUnavailable):
            _ = [pair async for pair in store.queued_ids()]

        server.start()  # on the same port, empty: it kept nothing
        async with asyncio.timeout(10):
            while True:
                try:
                    assert await store.get(task.task_id) is None
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.05)  # the retry period runs out
        again = _task()
        await store.create(again)
        assert await store.mark_processing(again.task_id, 1)
        assert [t.task_id for t in await store.list_by_status(TaskStatus.PROCESSING, 5)] == [again.task_id]
        await store.close()
