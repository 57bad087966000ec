"""Two replicas' batch runners on one real Redis and one shared files folder, with fake line
services and real accounts (the Redis key store): one replica runs a batch at a time; a replica
killed mid-batch has its batch finished by the other once its lease expired, each line recorded
and paid once; a cancel made through either replica stops the batch where it runs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis

from schemas.errors import ApiError, ErrorCode
from schemas.openai.batches import Batch, BatchCreateRequest
from schemas.openai.embeddings import EmbeddingResponse, EmbeddingUsage
from server.accounts import Accounts, Meter
from server.batches.files import BatchFiles
from server.batches.runner import BatchRunner
from server.batches.service import Batches
from server.batches.store import FileContents
from server.batches.store_redis import RedisBatchStore
from server.keystore_redis import PREFIX, RedisKeyStore
from server.settings import AccountSettings, BatchSettings
from tests.redis_server import RedisServer, redis_server

ENDPOINT = "/v1/embeddings"
HEARTBEAT_S = 0.1
LEASE_S = 0.5
CREDITS = 100.0
WAIT_S = 20.0  # the bound on every wait below


def line(custom_id: str, text: str) -> str:
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": {"model": "m", "input": text}}
    )


class FakeEmbeddings:
    """Charges each line 1 credit (one token at 1,000 credits per 1k) as the live service does.
    Lines whose input is in ``held`` wait for ``release``; one cut off while waiting settles
    nothing, as a killed process settles nothing. ``refuse_first``: the first call of each such
    input is turned away (queue full), after its charge was given back."""

    def __init__(self, held: set[str] | None = None, refuse_first: set[str] | None = None) -> None:
        self.calls: list[str] = []
        self.held = held or set()
        self.refuse_first = refuse_first or set()
        self.release = asyncio.Event()
        self.waiting = asyncio.Event()

    async def __call__(self, request: Any, meter: Meter) -> EmbeddingResponse:
        charge = meter.tokens(1)
        self.calls.append(request.input)
        if request.input in self.refuse_first:
            self.refuse_first.discard(request.input)
            charge.close(failed=True)
            raise ApiError(ErrorCode.QUEUE_FULL, "busy", retry_after=0.01)
        if request.input in self.held:
            self.waiting.set()
            await self.release.wait()
        charge.close()
        return EmbeddingResponse(data=[], model=request.model, usage=EmbeddingUsage(prompt_tokens=1, total_tokens=1))


class Replica:
    def __init__(self, server: RedisServer, name: str, files: Path, service: FakeEmbeddings, lease_s: float) -> None:
        self.keys = RedisKeyStore(server.url, replica=name, timeout_s=2.0, retry_after_s=0.5)
        self.accounts = Accounts(self.keys, AccountSettings(price_per_1k_input_tokens=1000.0))
        self.store = RedisBatchStore(server.url, replica=name, timeout_s=2.0, retry_after_s=0.5, lease_s=lease_s)
        contents = FileContents(files)
        limits = BatchSettings(concurrent_lines=1)
        self.service = service
        self.files = BatchFiles(self.store, contents, limits)
        self.runner = BatchRunner(
            self.store,
            contents,
            {ENDPOINT: service},
            accounts=self.accounts,
            concurrent_lines=1,
            leases=self.store,
            heartbeat_s=HEARTBEAT_S,
        )
        self.batches = Batches(self.store, self.files, self.runner, limits)

    async def close(self) -> None:
        await self.runner.stop()
        self.store.close()
        self.keys.close()


@pytest.fixture(scope="module")
def redis_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


class Cluster:
    def __init__(self, server: RedisServer, tmp_path: Path) -> None:
        self.server = server
        self.files = tmp_path / "shared-files"
        self.replicas: list[Replica] = []
        keys = RedisKeyStore(server.url, replica="admin", timeout_s=2.0, retry_after_s=0.5)
        info, _ = keys.create("batch owner")
        keys.add_credits(info.id, CREDITS)
        keys.close()
        self.key = info.id

    async def replica(self, name: str, service: FakeEmbeddings, lease_s: float = LEASE_S) -> Replica:
        replica = Replica(self.server, name, self.files, service, lease_s)
        self.replicas.append(replica)
        await replica.runner.start()
        return replica

    async def submit(self, replica: Replica, texts: list[str]) -> Batch:
        data = "\n".join(line(f"l{i}", text) for i, text in enumerate(texts)).encode()
        file = await replica.files.upload(self.key, "in.jsonl", "batch", data)
        request = BatchCreateRequest(input_file_id=file.id, endpoint=ENDPOINT, completion_window="24h")
        return await replica.batches.create(self.key, request)

    async def ended(self, replica: Replica, batch_id: str) -> Batch:
        async with asyncio.timeout(WAIT_S):
            while True:
                batch = await replica.batches.get(self.key, batch_id)
                if batch.status in ("completed", "cancelled", "failed", "expired"):
                    return batch
                await asyncio.sleep(0.02)

    async def output(self, replica: Replica, file_id: str | None) -> list[str]:
        assert file_id is not None
        data = await replica.files.content(self.key, file_id)
        return [msgspec.json.decode(raw)["custom_id"] for raw in data.splitlines()]

    def balance(self) -> float | None:
        return self.replicas[0].accounts.balance(self.key)

    async def close(self) -> None:
        for replica in self.replicas:
            await replica.close()


@pytest.fixture
async def cluster(redis_instance: RedisServer, tmp_path: Path) -> Any:
    redis_instance.flush()
    made = Cluster(redis_instance, tmp_path)
    yield made
    await made.close()


async def wait_for(event: asyncio.Event) -> None:
    async with asyncio.timeout(WAIT_S):
        await event.wait()


async def test_only_one_replica_runs_a_batch(cluster: Cluster) -> None:
    first = await cluster.replica("a", FakeEmbeddings(held={"t0"}))
    second = await cluster.replica("b", FakeEmbeddings(held={"t0"}))
    batch = await cluster.submit(first, [f"t{i}" for i in range(4)])
    await wait_for(first.service.waiting)
    # Several heartbeats of both replicas pass while the batch runs on the first.
    await asyncio.sleep(10 * HEARTBEAT_S)
    first.service.release.set()
    second.service.release.set()
    done = await cluster.ended(second, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 4
    assert first.service.calls == ["t0", "t1", "t2", "t3"] and second.service.calls == []
    assert await cluster.output(second, done.output_file_id) == ["l0", "l1", "l2", "l3"]
    assert cluster.balance() == CREDITS - 4


async def test_a_killed_replicas_batch_is_finished_by_another_each_line_once_and_paid_once(cluster: Cluster) -> None:
    first = await cluster.replica("a", FakeEmbeddings(held={"t2"}))
    batch = await cluster.submit(first, [f"t{i}" for i in range(5)])
    await wait_for(first.service.waiting)  # t0 and t1 recorded, t2 running and reserved
    second = await cluster.replica("b", FakeEmbeddings())
    await first.runner.stop(release=False)  # killed: its lease is left to expire
    assert len(first.keys.open_reservations()) == 1  # t2's charge, left open
    done = await cluster.ended(second, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 5
    assert first.service.calls == ["t0", "t1", "t2"]
    assert second.service.calls == ["t2", "t3", "t4"]  # the recorded lines did not run again
    assert await cluster.output(second, done.output_file_id) == ["l0", "l1", "l2", "l3", "l4"]
    # The dead replica's reservation of t2 was refunded, the second run of t2 paid.
    assert cluster.balance() == CREDITS - 5
    assert first.keys.open_reservations() == () and second.keys.open_reservations() == ()


async def test_a_stopped_replica_hands_its_batch_over_at_once(cluster: Cluster) -> None:
    # Leases far longer than the wait: only the release lets the second replica take over.
    first = await cluster.replica("a", FakeEmbeddings(held={"t1"}), lease_s=3 * WAIT_S)
    batch = await cluster.submit(first, [f"t{i}" for i in range(3)])
    await wait_for(first.service.waiting)
    second = await cluster.replica("b", FakeEmbeddings(), lease_s=3 * WAIT_S)
    await first.runner.stop()
    done = await cluster.ended(second, batch.id)
    assert done.status == "completed" and second.service.calls == ["t1", "t2"]
    assert await cluster.output(second, done.output_file_id) == ["l0", "l1", "l2"]


async def test_a_cancel_through_another_replica_stops_the_batch_where_it_runs(cluster: Cluster) -> None:
    first = await cluster.replica("a", FakeEmbeddings(held={"t0"}))
    second = await cluster.replica("b", FakeEmbeddings())
    batch = await cluster.submit(first, [f"t{i}" for i in range(4)])
    await wait_for(first.service.waiting)
    cancelling = await second.batches.cancel(cluster.key, batch.id)
    assert cancelling.status == "cancelling"
    # The first replica's heartbeat reads the cancel; until then its line stays held.
    async with asyncio.timeout(WAIT_S):
        while not first.runner._wake[batch.id].is_set():
            await asyncio.sleep(0.02)
    first.service.release.set()
    done = await cluster.ended(second, batch.id)
    assert done.status == "cancelled"
    assert first.service.calls == ["t0"] and second.service.calls == []
    assert await cluster.output(second, done.output_file_id) == ["l0"]
    assert cluster.balance() == CREDITS - 1


async def test_a_line_turned_away_runs_again_and_is_paid_once(cluster: Cluster) -> None:
    first = await cluster.replica("a", FakeEmbeddings(refuse_first={"t1"}))
    batch = await cluster.submit(first, ["t0", "t1"])
    done = await cluster.ended(first, batch.id)
    assert done.status == "completed" and first.service.calls == ["t0", "t1", "t1"]
    assert cluster.balance() == CREDITS - 2
    assert first.keys.open_reservations() == ()


async def test_a_replica_that_lost_its_lease_stops_and_the_new_holder_finishes(cluster: Cluster) -> None:
    first = await cluster.replica("a", FakeEmbeddings(held={"t1"}))
    batch = await cluster.submit(first, [f"t{i}" for i in range(3)])
    await wait_for(first.service.waiting)
    second = await cluster.replica("b", FakeEmbeddings())
    # As if the first had stalled past its lease: it expires and the second takes the batch.
    client = redis.Redis.from_url(cluster.server.url)
    client.delete(f"{PREFIX}batch:{batch.id}:lease")
    client.close()
    assert second.store.claim(batch.id)
    done = await cluster.ended(second, batch.id)
    assert done.status == "completed"
    assert first.service.calls == ["t0", "t1"] and second.service.calls == ["t1", "t2"]
    assert await cluster.output(second, done.output_file_id) == ["l0", "l1", "l2"]
    # The first stopped at its next heartbeat, its line cut off unpaid.
    async with asyncio.timeout(WAIT_S):
        while batch.id in first.runner._tasks:
            await asyncio.sleep(0.02)
    assert cluster.balance() == CREDITS - 3
