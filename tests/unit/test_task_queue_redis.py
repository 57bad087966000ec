"""The shared task queue on a real redis-server: per-model streams, acks, leases taken over
once they expire, the bounds' counts under concurrency, and entries given back at a stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.errors import ApiError, ErrorCode
from server.tasks.queue import QueuedTask
from server.tasks.queue_redis import RedisTaskQueue
from tests.redis_server import RedisServer, redis_server

WAIT_S = 10.0


@pytest.fixture(scope="module")
def redis_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


class Queues:
    """Makes queues on one flushed Redis and stops them all at the end."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.made: list[RedisTaskQueue] = []

    async def make(self, replica: str, models: list[str], **options: Any) -> RedisTaskQueue:
        settings: dict[str, Any] = {
            "max_total": 100,
            "max_per_key": 100,
            "heartbeat_s": 0.1,
            "lease_s": 0.4,
            "timeout_s": 1.0,
            "retry_after_s": 0.5,
            "block_s": 0.1,
            **options,
        }
        queue = RedisTaskQueue(self.server.url, replica=replica, models=models, **settings)
        await queue.start()
        self.made.append(queue)
        return queue


@pytest.fixture
async def queues(redis_instance: RedisServer) -> AsyncIterator[Queues]:
    redis_instance.flush()
    made = Queues(redis_instance)
    yield made
    for queue in made.made:
        await queue.stop()


async def take(queue: RedisTaskQueue) -> QueuedTask:
    async with asyncio.timeout(WAIT_S):
        item = await queue.get()
    assert item is not None
    return item


async def test_a_replica_takes_only_the_models_it_serves(queues: Queues) -> None:
    only_b = await queues.make("rb", ["model-b"])
    a_and_b = await queues.make("rab", ["model-a", "model-b"])
    await only_b.put("t-a", "k", "model-a")
    # Serving only model B, it waits through several reads and never gets A's task.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await only_b.get()
    item = await take(a_and_b)
    assert (item.task_id, item.owner, item.model, item.taken_over) == ("t-a", "k", "model-a", False)
    await only_b.put("t-b", None, "model-b")
    assert (await take(only_b)).task_id == "t-b"


async def test_an_acked_entry_leaves_and_is_never_taken_over(queues: Queues) -> None:
    first = await queues.make("r1", ["m"])
    second = await queues.make("r2", ["m"])
    await first.put("t1", "k", "m")
    item = await take(first)
    assert await first.counts() == {"total": 1, "key:k": 1}
    await first.done(item)
    assert await first.counts() == {}
    await first.done(item)  # a second ack changes nothing
    assert await first.counts() == {}
    await first.stop()
    # Well past the lease: nothing is left for the other replica to take over.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):
            await second.get()


async def test_a_held_entry_is_renewed_while_its_replica_lives(queues: Queues) -> None:
    holder = await queues.make("r1", ["m"])
    other = await queues.make("r2", ["m"])
    await holder.put("t1", None, "m")
    await take(holder)
    with pytest.raises(TimeoutError):  # more than twice the lease: the heartbeats keep it
        async with asyncio.timeout(1.0):
            await other.get()


async def test_an_expired_lease_is_taken_over_by_another_replica(queues: Queues) -> None:
    dying = await queues.make("r1", ["m"])
    survivor = await queues.make("r2", ["m"])
    await dying.put("t1", "k", "m")
    held = await take(dying)
    await dying.stop()  # heartbeats stop, nothing acked: as if the process died
    lost: list[str] = []
    dying.on_lost = lost.append
    item = await take(survivor)
    assert (item.task_id, item.taken_over) == ("t1", True)
    assert item.ref == held.ref  # the same entry, now the survivor's
    await dying.done(held)  # a late ack of the dead holder: not its entry any more
    assert await survivor.counts() == {"total": 1, "key:k": 1}
    await survivor.done(item)
    assert await survivor.counts() == {}


async def test_a_replica_that_lost_its_lease_is_told_and_cannot_renew_it(queues: Queues) -> None:
    stalled = await queues.make("r1", ["m"], heartbeat_s=30.0, lease_s=60.0)
    taker = await queues.make("r2", ["m"], heartbeat_s=0.1, lease_s=0.2)
    lost: list[str] = []
    stalled.on_lost = lost.append
    await stalled.put("t1", None, "m")
    held = await take(stalled)  # held, and not renewed within the taker's lease
    item = await take(taker)
    assert item.taken_over
    await stalled.renew()
    assert lost == ["t1"]
    await stalled.done(held)  # a late ack: the entry is the taker's now
    assert await taker.counts() == {"total": 1, "key:": 1}  # an open server's tasks: key ""
    await taker.renew()  # still the taker's
    await taker.done(item)
    assert await taker.counts() == {}


async def test_the_counts_stay_exact_under_concurrent_puts(queues: Queues) -> None:
    queue = await queues.make("r1", ["m1", "m2"], max_total=50, max_per_key=30)
    other = await queues.make("r2", ["m1", "m2"], max_total=50, max_per_key=30)
    puts = [
        (queue if i % 2 else other).put(f"t{i}", "a" if i < 30 else "b", "m1" if i % 3 else "m2") for i in range(50)
    ]
    await asyncio.gather(*puts)
    assert await queue.counts() == {"total": 50, "key:a": 30, "key:b": 20}
    await queue.put("t0", "a", "m1")  # queued already: not twice
    assert (await queue.counts())["total"] == 50
    with pytest.raises(ApiError) as full:
        await queue.check_room("c")
    assert full.value.code is ErrorCode.QUEUE_FULL and full.value.retry_after
    # Taken, acked and cancelled concurrently: every entry leaves exactly once.
    items = [await take(queue if i % 2 else other) for i in range(40)]
    ends = [(queue if i % 2 else other).done(item) for i, item in enumerate(items)]
    ends += [queue.discard(f"t{i}", None) for i in range(50)]
    await asyncio.gather(*ends)
    assert await queue.counts() == {}


async def test_the_bounds_per_key_and_in_all(queues: Queues) -> None:
    queue = await queues.make("r1", ["m"], max_total=3, max_per_key=2)
    await queue.put("t1", "a", "m")
    await queue.put("t2", "a", "m")
    with pytest.raises(ApiError) as per_key:
        await queue.check_room("a")
    assert "API key" in per_key.value.message
    await queue.check_room("b")
    await queue.put("t3", "b", "m")
    with pytest.raises(ApiError) as total:
        await queue.check_room("b")
    assert "queue is full" in total.value.message
    await queue.discard("t1", "a")
    await queue.check_room("a")


async def test_a_released_entry_goes_to_another_replica_at_once(queues: Queues) -> None:
    stopping = await queues.make("r1", ["m"])
    other = await queues.make("r2", ["m"], heartbeat_s=30.0, lease_s=60.0)  # no takeover: a plain read
    await stopping.put("t1", "k", "m")
    item = await take(stopping)
    await stopping.release(item)
    again = await take(other)
    assert (again.task_id, again.taken_over) == ("t1", False)
    assert await other.counts() == {"total": 1, "key:k": 1}  # moved, not added


async def test_close_wakes_a_waiting_get_promptly(queues: Queues) -> None:
    queue = await queues.make("r1", ["m"], block_s=0.2)
    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0.3)
    queue.close()
    async with asyncio.timeout(WAIT_S):
        assert await waiting is None


async def test_an_unreachable_redis_refuses_submissions_with_503(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        queue = RedisTaskQueue(
            server.url,
            replica="r1",
            models=["m"],
            max_total=10,
            max_per_key=10,
            heartbeat_s=0.1,
            lease_s=0.4,
            timeout_s=0.5,
            retry_after_s=1.0,
        )
        server.stop()
        for call in (queue.check_room("k"), queue.put("t1", "k", "m")):
            with pytest.raises(ApiError) as down:
                async with asyncio.timeout(WAIT_S):
                    await call
            assert down.value.code is ErrorCode.SERVICE_NOT_AVAILABLE and down.value.retry_after
        await queue.stop()


async def test_a_waiting_get_rides_out_a_redis_restart(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        queue = RedisTaskQueue(
            server.url,
            replica="r1",
            models=["m"],
            max_total=10,
            max_per_key=10,
            heartbeat_s=0.1,
            lease_s=0.4,
            timeout_s=0.5,
            retry_after_s=0.2,
            block_s=0.1,
        )
        await queue.start()
        try:
            await queue.put("t1", None, "m")
            await queue.done(await take(queue))
            server.stop()
            waiting = asyncio.create_task(queue.get())
            await asyncio.sleep(1.0)
            assert not waiting.done()  # neither an error nor an answer while Redis is away
            server.start()  # empty: its streams and groups are gone
            async with asyncio.timeout(WAIT_S):
                while True:
                    try:
                        await queue.put("t2", None, "m")
                        break
                    except ApiError:  # within the retry period after the failure
                        await asyncio.sleep(0.1)
                item = await waiting
            assert item is not None and item.task_id == "t2"
        finally:
            await queue.stop()
