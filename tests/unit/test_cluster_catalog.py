"""The cluster catalog on a real redis-server: replicas see each other's entries, an entry whose
heartbeats stop expires after its lease, a clean stop removes it at once, and `cluster.serve`
resolves names and aliases (an unknown one stops startup)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis

from engines.registry import CatalogError
from server.cluster import LocalCluster, RedisCluster, Replica, cluster_refusal
from server.keystore_redis import PREFIX
from tests.redis_server import RedisServer, redis_server
from tests.unit.conftest import make_state

HEARTBEAT_S = 0.1
LEASE_S = 0.4
DEADLINE_S = 10.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as server:
        yield server


def entry(replica_id: str, *models: str) -> Replica:
    now = time.time()
    return Replica(id=replica_id, url=f"http://{replica_id}.test", models=models, started_at=now, heartbeat_at=now)


@asynccontextmanager
async def running(store: RedisServer, replica_id: str, *models: str) -> AsyncIterator[RedisCluster]:
    cluster = RedisCluster(
        store.url, entry(replica_id, *models), heartbeat_s=HEARTBEAT_S, lease_s=LEASE_S, timeout_s=0.5
    )
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop()


async def until(condition: Callable[[], bool]) -> None:
    """Wait for `condition`, the view's next beats; a bound, not a measure."""
    async with asyncio.timeout(DEADLINE_S):
        while not condition():
            await asyncio.sleep(HEARTBEAT_S / 2)


def ids(replicas: list[Replica]) -> list[str]:
    return [replica.id for replica in replicas]


async def test_two_replicas_see_each_others_models(store: RedisServer) -> None:
    async with running(store, "a", "chat") as a, running(store, "b", "chat", "image") as b:
        # b started after a's first beat: it read a's entry at once; a reads b's at its next beat.
        assert ids(b.serving("chat")) == ["b", "a"]
        await until(lambda: ids(a.serving("image")) == ["b"])
        assert ids(a.serving("chat")) == ["a", "b"]
        assert a.serving("video") == []
        assert a.served_here("chat") and not a.served_here("image")
        peer = next(replica for replica in a.replicas() if replica.id == "b")
        assert peer.url == "http://b.test" and peer.models == ("chat", "image")


async def test_an_entry_whose_heartbeats_stop_expires_after_its_lease(store: RedisServer) -> None:
    async with running(store, "a", "chat") as a:
        dying = RedisCluster(
            store.url, entry("dying", "image"), heartbeat_s=HEARTBEAT_S, lease_s=LEASE_S, timeout_s=0.5
        )
        await dying.start()
        await until(lambda: ids(a.serving("image")) == ["dying"])
        # The process dies: its beat stops, nothing removes its entry.
        beating = dying._beating
        assert beating is not None
        dying._stopping = True
        beating.cancel()
        await asyncio.wait([beating], timeout=DEADLINE_S)
        assert beating.done()
        await until(lambda: a.serving("image") == [])
        client = redis.Redis.from_url(store.url, decode_responses=True)
        try:
            assert client.get(f"{PREFIX}replica:dying") is None
            assert "dying" not in client.smembers(f"{PREFIX}replicas")  # dropped from the index too
        finally:
            client.close()
        await dying.stop()


async def test_a_clean_stop_removes_the_entry_at_once(store: RedisServer) -> None:
    client = redis.Redis.from_url(store.url, decode_responses=True)
    try:
        async with running(store, "a", "chat") as a:
            async with running(store, "b", "image"):
                assert client.get(f"{PREFIX}replica:b") is not None
                await until(lambda: ids(a.serving("image")) == ["b"])
            # Removed by the stop itself, well before its lease would have ended it.
            assert client.get(f"{PREFIX}replica:b") is None
            assert client.smembers(f"{PREFIX}replicas") == {"a"}
            await until(lambda: a.serving("image") == [])
        assert client.keys(f"{PREFIX}replica*") == []
    finally:
        client.close()


async def test_while_redis_is_down_the_view_ends_with_the_lease_and_comes_back(store: RedisServer) -> None:
    async with running(store, "a", "chat") as a, running(store, "b", "image"):
        await until(lambda: ids(a.replicas()) == ["a", "b"])
        store.stop()
        # Lookups never wait on Redis; after a lease without a read only this replica is known.
        await until(lambda: ids(a.replicas()) == ["a"])
        assert ids(a.serving("chat")) == ["a"]
        store.start()
        await until(lambda: ids(a.replicas()) == ["a", "b"])


def test_the_refusal_names_the_replicas_that_run_the_model_or_says_none_does() -> None:
    here = LocalCluster(entry("here", "chat"))

    class TwoReplicas(LocalCluster):
        retry_after_s = 10.0

        def serving(self, model: str) -> list[Replica]:
            return [entry("east", "image"), entry("west", "image")] if model == "image" else []

    cluster = TwoReplicas(entry("here", "chat"))
    elsewhere = cluster_refusal(cluster, "image")
    assert elsewhere.status == 404 and elsewhere.code.value == "MODEL_NOT_FOUND"
    assert "http://east.test, http://west.test" in elsewhere.message
    nowhere = cluster_refusal(cluster, "video")
    assert nowhere.status == 503 and nowhere.retry_after == 10.0
    # One server: no replica can come to run it, so it is simply not found here.
    alone = cluster_refusal(here, "image")
    assert alone.status == 404 and alone.retry_after is None


def test_serve_takes_aliases_and_an_unknown_name_stops_startup(tmp_path: Path) -> None:
    state = make_state(tmp_path / "ok", cluster={"serve": ["fake-chat-alias", "fake-sd"]})
    assert state.scheduler.served_models() == ["fake-chat", "fake-sd"]
    assert state.cluster.here.models == ("fake-chat", "fake-sd")
    with pytest.raises(CatalogError, match=r"cluster\.serve names 'nope'"):
        make_state(tmp_path / "bad", cluster={"serve": ["fake-chat", "nope"]})


def test_without_serve_every_model_runs_here(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    assert isinstance(state.cluster, LocalCluster)
    assert state.scheduler.served_models() == ["fake-chat", "fake-embed", "fake-rerank", "fake-sd"]
    assert all(state.cluster.served_here(name) for name in state.scheduler.served_models())
