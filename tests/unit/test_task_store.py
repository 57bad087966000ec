from __future__ import annotations

import asyncio
from pathlib import Path

from server.tasks.models import OutputFile, Task, TaskStatus, TaskType, now_ms
from server.tasks.store import SqliteTaskStore, TaskStore


def _task(**fields: object) -> Task:
    defaults: dict[str, object] = {
        "task_type": TaskType.TXT_TO_IMG,
        "model": "tiny-sd",
        "request": b'{"request": {"prompt": "a cat"}}',
    }
    return Task(**{**defaults, **fields})  # type: ignore[arg-type]


async def test_create_get_round_trip(tmp_path: Path) -> None:
    store: TaskStore = SqliteTaskStore(tmp_path / "tasks.sqlite3")
    task = _task(
        owner_key_id="k1",
        webhook_url="https://example.com/hook",
        trace_context={"traceparent": "00-abc-def-01"},
        url_ttl_s=600,
        seed=7,
    )
    await store.create(task)
    assert await store.get(task.task_id) == task
    assert await store.get("no-such-task") is None


async def test_transitions_and_finished_tasks_are_final(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "tasks.sqlite3")
    task = _task(trace_context={"traceparent": "t"})
    await store.create(task)
    assert not await store.update_progress(task.task_id, 50, 3)  # not running yet
    assert await store.claim(task.task_id)  # a runner took it: still QUEUED until its work starts
    assert (await store.status_of(task.task_id)) is TaskStatus.QUEUED
    assert await store.mark_processing(task.task_id, 1234)
    assert not await store.mark_processing(task.task_id, 1235)  # a second runner loses
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
    done = await store.get(task.task_id)
    assert done is not None
    assert done.status is TaskStatus.SUCCEED
    assert (done.outputs, done.seed, done.reason, done.progress_percent) == (outputs, 42, "", 100)
    assert done.trace_context == {"traceparent": "t"}
    assert done.complete_time_ms is not None

    failed = _task()
    await store.create(failed)
    assert await store.fail(failed.task_id, "engine exploded")
    assert not await store.finish(failed.task_id, outputs, seed=1)
    assert not await store.mark_processing(failed.task_id, 1)
    after = await store.get(failed.task_id)
    assert after is not None
    assert (after.status, after.reason, after.outputs) == (TaskStatus.FAILED, "engine exploded", [])


async def test_recover_interrupted_fails_only_processing(tmp_path: Path) -> None:
    path = tmp_path / "tasks.sqlite3"
    store = SqliteTaskStore(path)
    queued, running, done = _task(submit_time_ms=1), _task(submit_time_ms=2), _task(submit_time_ms=3)
    for task in (queued, running, done):
        await store.create(task)
    await store.mark_processing(running.task_id, 10)
    await store.mark_processing(done.task_id, 10)
    await store.finish(done.task_id, [], seed=None)
    await store.close()

    reopened = SqliteTaskStore(path)  # the process restarted
    assert await reopened.recover_interrupted("interrupted by a restart") == [running.task_id]
    assert await reopened.recover_interrupted("again") == []
    states = {t.task_id: t for t in [await reopened.get(x.task_id) for x in (queued, running, done)] if t}
    assert states[queued.task_id].status is TaskStatus.QUEUED
    assert states[running.task_id].status is TaskStatus.FAILED
    assert states[running.task_id].reason == "interrupted by a restart"
    assert states[done.task_id].status is TaskStatus.SUCCEED
    assert [t.task_id for t in await reopened.next_queued(10)] == [queued.task_id]
    assert [t.task_id for t in await reopened.list_by_status(TaskStatus.FAILED, 10)] == [running.task_id]


async def test_next_queued_oldest_first_with_limit(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "tasks.sqlite3")
    tasks = [_task(submit_time_ms=t) for t in (30, 10, 20)]
    for task in tasks:
        await store.create(task)
    oldest = await store.next_queued(2)
    assert [t.submit_time_ms for t in oldest] == [10, 20]


async def test_a_task_claimed_by_every_crashed_runner_is_failed_not_retaken(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "tasks.sqlite3")
    held, released = _task(submit_time_ms=1), _task(submit_time_ms=2)
    for task in (held, released):
        await store.create(task)
    for _ in range(3):
        await store.claim(held.task_id)  # taken, and each time the process died
        await store.claim(released.task_id)
        await store.release(released.task_id)  # a clean stop gives the claim back
    assert await store.recover_interrupted("x", max_claims=3, held_reason="held") == [held.task_id]
    failed = await store.get(held.task_id)
    assert failed is not None and (failed.status, failed.reason) == (TaskStatus.FAILED, "held")
    assert [task_id async for task_id, _ in store.queued_ids()] == [released.task_id]


async def test_queued_ids_pages_through_every_queued_task(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "tasks.sqlite3")
    tasks = [_task(submit_time_ms=i // 3, owner_key_id=f"k{i % 2}") for i in range(25)]  # ties in time too
    for task in tasks:
        await store.create(task)
    await store.fail(tasks[4].task_id, "gone")
    listed = [pair async for pair in store.queued_ids(page=4)]
    expected = [(t.task_id, t.owner_key_id) for t in tasks if t is not tasks[4]]
    assert listed == expected


async def test_ending_a_task_with_a_webhook_queues_its_delivery_in_the_same_write(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "tasks.sqlite3")
    hooked, silent, failing = _task(webhook_url="https://h/1"), _task(), _task(webhook_url="https://h/3")
    for task in (hooked, silent, failing):
        await store.create(task)
    await store.finish(hooked.task_id, [], seed=None)
    await store.finish(silent.task_id, [], seed=None)
    await store.fail(failing.task_id, "no")
    due = await store.due_webhooks(now_ms() + 1, 10, lease_ms=0)  # taken, still due
    assert sorted(p.task_id for p in due) == sorted([hooked.task_id, failing.task_id])
    await store.webhook_retry(hooked.task_id, 1, now_ms() + 60_000)
    assert [p.task_id for p in await store.due_webhooks(now_ms() + 1, 10, lease_ms=0)] == [failing.task_id]
    await store.webhook_done(failing.task_id)
    assert await store.pending_webhooks() == 1


async def test_retention_deletes_only_old_finished_tasks_and_their_deliveries(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "tasks.sqlite3")
    old_done, new_done, old_queued = _task(webhook_url="https://h/1"), _task(), _task(submit_time_ms=1)
    for task in (old_done, new_done, old_queued):
        await store.create(task)
    await store.finish(old_done.task_id, [], seed=None)
    cutoff = now_ms() + 1
    await asyncio.sleep(0.01)
    await store.finish(new_done.task_id, [], seed=None)
    assert await store.delete_finished_before(cutoff) == 1
    assert await store.get(old_done.task_id) is None
    assert await store.get(new_done.task_id) is not None
    assert await store.get(old_queued.task_id) is not None  # never finished: never deleted
    assert await store.pending_webhooks() == 0
