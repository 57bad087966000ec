"""The /v3 task runner through the real app and SQLite store, on the fake image engine:
fair turns between keys, QUEUE_FULL, result writes that fail, the sweep, retention, cancel,
the durable webhook outbox, the data dir lock and the output cleaner."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from server.app import create_app
from server.composition import Components
from server.data_lock import DataDirLock, DataDirLocked
from server.storage.local import clean_outputs_periodically
from server.tasks.outbox import backoff_ms
from server.tasks.runner import CANCELLED_REASON, LOST_REASON, UNRECORDED_REASON
from tests.unit.conftest import make_state
from tests.unit.test_webhooks import receiver

REQUEST = {"model_name": "fake-sd", "prompt": "a", "width": 128, "height": 128, "steps": 2}
FREE = {"accounts": {"requests_per_hour": 0, "requests_per_day": 0}, "tasks": {"allow_private_urls": True}}


@asynccontextmanager
async def running(state: Components) -> AsyncIterator[AsyncTestClient]:
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        yield client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def submit(client: AsyncTestClient, key: str, **request: Any) -> str:
    extra = request.pop("extra", None)
    body: dict[str, Any] = {"request": {**REQUEST, **request}}
    if extra:
        body["extra"] = extra
    response = await client.post("/v3/async/txt2img", json=body, headers=auth(key))
    assert response.status_code == 200, response.text
    return str(response.json()["task_id"])


async def status(client: AsyncTestClient, key: str, task_id: str) -> dict[str, Any]:
    response = await client.get("/v3/async/task-result", params={"task_id": task_id}, headers=auth(key))
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()["task"]
    return task


async def until(check: Any, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await check():
            await asyncio.sleep(0.01)


class Gate:
    """Wraps the fake engine: records what starts, and holds each job until let through."""

    def __init__(self, state: Components, *, hold: bool = True) -> None:
        self.engine = state.scheduler.engine("fake-sd")
        self.original = self.engine.generate  # type: ignore[attr-defined]
        self.started: list[str] = []
        self.open = asyncio.Event()
        self.cancelled = 0
        if not hold:
            self.open.set()
        self.engine.generate = self.generate  # type: ignore[attr-defined]

    async def generate(self, job: Any, progress: Any = None) -> Any:
        self.started.append(job.prompt)
        if progress is not None:
            progress(0.5)  # the work has begun
        try:
            await self.open.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return await self.original(job)


async def test_two_keys_backlogs_take_turns(tmp_path: Path) -> None:
    state = make_state(tmp_path, **{**FREE, "tasks": {"workers": 1, "batch_wait_ms": 0}})
    _, key_a = state.keystore.create("a")
    _, key_b = state.keystore.create("b")
    async with running(state) as client:
        gate = Gate(state)
        a_tasks = [await submit(client, key_a, prompt=f"a{i}") for i in range(20)]
        b_tasks = [await submit(client, key_b, prompt=f"b{i}") for i in range(2)]
        gate.open.set()
        for task_id, key in [*((t, key_a) for t in a_tasks), *((t, key_b) for t in b_tasks)]:
            await until(lambda t=task_id, k=key: _is(client, k, t, "TASK_STATUS_SUCCEED"))
    order = gate.started
    # FIFO would run both of B's after all twenty of A's; in turns, B waits for about one of A's each.
    assert order.index("b0") <= 3 and order.index("b1") <= 5, order
    assert [p for p in order if p.startswith("a")] == [f"a{i}" for i in range(20)]  # each key in its order


async def _is(client: AsyncTestClient, key: str, task_id: str, wanted: str) -> bool:
    return (await status(client, key, task_id))["status"] == wanted


async def test_queue_full_answers_429_with_retry_after(tmp_path: Path) -> None:
    state = make_state(tmp_path, **{**FREE, "tasks": {"workers": 1, "max_queued_per_key": 2, "max_queued": 3}})
    _, key_a = state.keystore.create("a")
    _, key_b = state.keystore.create("b")
    async with running(state) as client:
        gate = Gate(state)
        await submit(client, key_a)  # taken by the one worker
        await until(lambda: asyncio.sleep(0, bool(gate.started)))
        for _ in range(2):
            await submit(client, key_a)
        refused = await client.post("/v3/async/txt2img", json={"request": REQUEST}, headers=auth(key_a))
        assert refused.status_code == 429
        assert refused.json()["reason"] == "QUEUE_FULL"
        assert int(refused.headers["retry-after"]) >= 1
        await submit(client, key_b)  # another key still fits, up to the total
        total = await client.post("/v3/async/txt2img", json={"request": REQUEST}, headers=auth(key_b))
        assert total.status_code == 429 and total.json()["reason"] == "QUEUE_FULL"
        gate.open.set()


async def test_a_finish_blocked_by_a_locked_database_is_retried(tmp_path: Path) -> None:
    state = make_state(tmp_path, **FREE)
    _, key = state.keystore.create("a")
    async with running(state) as client:
        gate = Gate(state)
        task_id = await submit(client, key)
        await until(lambda: _is(client, key, task_id, "TASK_STATUS_PROCESSING"))
        locked, release = threading.Event(), threading.Event()

        def hold_the_lock() -> None:  # another writer holds the database (a real SQLite lock)
            db = sqlite3.connect(tmp_path / "tasks.sqlite3", isolation_level=None)
            db.execute("BEGIN EXCLUSIVE")
            locked.set()
            release.wait(10)
            db.execute("COMMIT")
            db.close()

        holder = threading.Thread(target=hold_the_lock)
        holder.start()
        locked.wait(5)
        threading.Timer(1.5, release.set).start()
        gate.open.set()  # the task finishes while the database is locked
        await until(lambda: asyncio.sleep(0, release.is_set()), 10)
        holder.join(5)
        await until(lambda: _is(client, key, task_id, "TASK_STATUS_SUCCEED"), 15)


async def test_a_finish_that_keeps_failing_ends_failed_never_processing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = make_state(tmp_path, **FREE)
    _, key = state.keystore.create("a")
    monkeypatch.setattr("server.tasks.runner.WRITE_RETRY_S", 0.001)

    async def disk_full(*_: Any, **__: Any) -> bool:
        raise sqlite3.OperationalError("database or disk is full")

    async with running(state) as client:
        Gate(state, hold=False)
        monkeypatch.setattr(state.task_store, "finish", disk_full)
        task_id = await submit(client, key)
        await until(lambda: _is(client, key, task_id, "TASK_STATUS_FAILED"))
        assert (await status(client, key, task_id))["reason"] == UNRECORDED_REASON

        # Neither the result nor the failure can be written: the sweep ends it once it can.
        monkeypatch.setattr(state.task_store, "fail", disk_full)
        stuck = await submit(client, key)
        await until(lambda: _is(client, key, stuck, "TASK_STATUS_PROCESSING"))
        await until(lambda: asyncio.sleep(0, stuck not in state.task_runner._active))  # every try failed
        monkeypatch.undo()
        await state.task_runner.sweep()
        after = await status(client, key, stuck)
        assert (after["status"], after["reason"]) == ("TASK_STATUS_FAILED", LOST_REASON)


async def test_retention_deletes_finished_tasks(tmp_path: Path) -> None:
    state = make_state(tmp_path, **{**FREE, "tasks": {"retention_s": 0.2}})
    _, key = state.keystore.create("a")
    async with running(state) as client:
        Gate(state, hold=False)
        task_id = await submit(client, key)
        await until(lambda: _is(client, key, task_id, "TASK_STATUS_SUCCEED"))
        await state.task_runner.sweep()
        assert await state.task_store.get(task_id) is not None  # not old enough yet
        await asyncio.sleep(0.3)
        await state.task_runner.sweep()
        assert await state.task_store.get(task_id) is None
        gone = await client.get("/v3/async/task-result", params={"task_id": task_id}, headers=auth(key))
        assert gone.status_code == 404


async def test_cancel_stops_a_running_task_refunds_once_and_sends_its_webhook(tmp_path: Path) -> None:
    state = make_state(tmp_path, **{**FREE, "tasks": {"allow_private_urls": True, "workers": 1}})
    key_info, key = state.keystore.create("a")
    _, other = state.keystore.create("b")
    state.keystore.set_credits(key_info.id, 10)
    async with receiver(lambda n: 200) as (url, received), running(state) as client:
        gate = Gate(state)
        task_id = await submit(client, key, extra={"webhook": {"url": url}})
        queued = await submit(client, key, prompt="queued")
        await until(lambda: _is(client, key, task_id, "TASK_STATUS_PROCESSING"))
        assert state.keystore.account(key_info.id).credits == 8  # type: ignore[union-attr]

        # A queued task is taken out of the queue: it never runs.
        assert (
            await client.post("/v3/async/task-cancel", json={"task_id": queued}, headers=auth(key))
        ).status_code == 200
        foreign = await client.post("/v3/async/task-cancel", json={"task_id": task_id}, headers=auth(other))
        assert foreign.status_code == 404
        cancelled = await client.post("/v3/async/task-cancel", json={"task_id": task_id}, headers=auth(key))
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["task"]["status"] == "TASK_STATUS_FAILED"
        assert cancelled.json()["task"]["reason"] == CANCELLED_REASON
        await until(lambda: asyncio.sleep(0, gate.cancelled == 1))  # the engine job was stopped
        again = await client.post("/v3/async/task-cancel", json={"task_id": task_id}, headers=auth(key))
        assert again.status_code == 200  # already ended: answered as it is
        await until(lambda: asyncio.sleep(0, len(received) >= 1))
        assert state.keystore.account(key_info.id).credits == 10  # type: ignore[union-attr]
        payload = msgspec.json.decode(received[0][1])["payload"]["task"]
        assert (payload["task_id"], payload["status"]) == (task_id, "TASK_STATUS_FAILED")
        gate.open.set()
        await asyncio.sleep(0.1)
        assert gate.started == ["a"]  # the cancelled queued task never ran
        missing = await client.post("/v3/async/task-cancel", json={}, headers=auth(key))
        assert missing.status_code == 400


async def test_a_webhook_that_cannot_be_delivered_survives_a_restart(tmp_path: Path) -> None:
    answers = {"status": 503}
    async with receiver(lambda n: answers["status"]) as (url, received):
        state = make_state(tmp_path, **FREE)
        _, key = state.keystore.create("a")
        async with running(state) as client:
            Gate(state, hold=False)
            task_id = await submit(client, key, extra={"webhook": {"url": url}})
            await until(lambda: asyncio.sleep(0, len(received) >= 1))  # tried, refused
        assert len(received) == 1
        answers["status"] = 200
        again = make_state(tmp_path, **FREE)

        async def outbox_empty() -> bool:
            return await again.task_store.pending_webhooks() == 0

        async with running(again):
            await until(outbox_empty, 15)
    delivered = msgspec.json.decode(received[-1][1])["payload"]["task"]
    assert (delivered["task_id"], delivered["status"]) == (task_id, "TASK_STATUS_SUCCEED")
    assert again.webhooks.delivered == 1


def test_backoff_doubles_with_jitter_and_a_cap() -> None:
    for attempts, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (10, 30.0)):
        waits = {backoff_ms(attempts, 1.0, 30.0) for _ in range(50)}
        assert all(ceiling * 500 <= wait <= ceiling * 1000 for wait in waits)
        assert len(waits) > 1  # spread, not in lockstep


async def test_one_process_per_data_dir(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path)
    first.acquire()
    with pytest.raises(DataDirLocked, match=f"pid {os.getpid()}"):
        DataDirLock(tmp_path).acquire()
    state = make_state(tmp_path)
    with pytest.raises(DataDirLocked):
        await state.start()
    first.release()
    second = DataDirLock(tmp_path)
    second.acquire()
    second.release()


async def test_the_output_cleaner_survives_an_error(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    storage = state.storage
    old = storage.root / "old-task"
    old.mkdir()
    (old / "0.png").write_bytes(b"x")
    os.utime(old / "0.png", (time.time() - 100, time.time() - 100))
    moved = tmp_path / "elsewhere"
    storage.root.rename(moved)  # the sweep fails: the folder is missing
    cleaner = asyncio.create_task(clean_outputs_periodically(storage, max_age_s=10, interval_s=0.02))
    try:
        await asyncio.sleep(0.1)
        assert not cleaner.done()
        moved.rename(storage.root)
        await until(lambda: asyncio.sleep(0, not old.exists()), 5)
    finally:
        cleaner.cancel()
        await asyncio.gather(cleaner, return_exceptions=True)
    await state.task_store.close()
    state.keystore.close()


async def test_shutdown_does_not_wait_for_a_webhook_in_flight(tmp_path: Path) -> None:
    async with receiver(lambda n: None) as (url, received):  # never answers
        state = make_state(tmp_path, **FREE)
        _, key = state.keystore.create("a")
        async with running(state) as client:
            Gate(state, hold=False)
            await submit(client, key, extra={"webhook": {"url": url}})
            await until(lambda: asyncio.sleep(0, len(received) >= 1))  # an attempt is in flight
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 3.0  # not the 5 s attempt timeout, nor its retries
        again = make_state(tmp_path, **FREE)
        assert await again.task_store.pending_webhooks() == 1  # left in the outbox for the next start
        await again.task_store.close()
        again.keystore.close()
