"""One contract for every batch store: SQLite in the data dir, and Redis shared by replicas.

Each test runs against both, the Redis one on a real redis-server on a loopback port. A second
"replica" is a second store object on the same Redis (with SQLite, one server: the same object).
The leases exist only in the shared store; their tests run on Redis alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from schemas.openai.batches import Batch, FileObject
from server.batches.store import BatchStore, LineResult, SqliteBatchStore, open_batch_store
from server.batches.store_redis import RedisBatchStore
from server.keystore import StoreUnavailable
from server.settings import BatchSettings, Settings
from tests.redis_server import RedisServer, redis_server

OpenStore = Callable[..., BatchStore]


@pytest.fixture(scope="module")
def redis_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


def open_redis(server: RedisServer, replica: str = "first", lease_s: float = 10.0) -> RedisBatchStore:
    return RedisBatchStore(server.url, replica=replica, timeout_s=2.0, retry_after_s=1.0, lease_s=lease_s)


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens a store object on this test's store; ``replica`` names the replica it serves."""
    opened: dict[str, BatchStore] = {}
    server: RedisServer | None = None
    if request.param == "redis":
        server = request.getfixturevalue("redis_instance")
        server.flush()

    def open_one(replica: str = "first") -> BatchStore:
        if server is None:
            if not opened:
                opened["sqlite"] = SqliteBatchStore(tmp_path / "batches.sqlite3")
            return opened["sqlite"]
        store = opened[replica] = open_redis(server, replica)
        return store

    yield open_one
    for store in opened.values():
        store.close()


def a_file(file_id: str, purpose: str = "batch") -> FileObject:
    return FileObject(id=file_id, bytes=10, created_at=1, filename=f"{file_id}.jsonl", purpose=purpose)  # type: ignore[arg-type]


def a_batch(batch_id: str, input_file_id: str = "file-in", status: str = "validating") -> Batch:
    return Batch(
        id=batch_id,
        endpoint="/v1/embeddings",
        input_file_id=input_file_id,
        completion_window="24h",
        status=status,  # type: ignore[arg-type]
        created_at=1,
    )


def test_files_are_kept_per_owner_up_to_the_limit_and_listed_newest_first(open_store: OpenStore) -> None:
    store = open_store()
    for name in ("f1", "f2", "f3"):
        assert store.add_file("alice", a_file(name, "batch" if name != "f2" else "batch_output"), max_files=3)
    assert not store.add_file("alice", a_file("f4"), max_files=3)
    assert store.file("alice", "f4") is None
    assert store.add_file("bob", a_file("g1"), max_files=3)  # another owner's own quota
    assert store.file("alice", "f1") == a_file("f1")
    assert store.file("bob", "f1") is None

    files, more = store.files("alice", purpose=None, after=None, limit=2)
    assert ([f.id for f in files], more) == (["f3", "f2"], True)
    files, more = store.files("alice", purpose=None, after="f2", limit=2)
    assert ([f.id for f in files], more) == (["f1"], False)
    files, more = store.files("alice", purpose="batch", after=None, limit=1)
    assert ([f.id for f in files], more) == (["f3"], True)
    assert store.files("alice", purpose=None, after="unknown", limit=5) == ([], False)
    assert store.files("alice", purpose=None, after="g1", limit=5) == ([], False)  # bob's, not alice's

    assert not store.delete_file("bob", "f1")
    assert store.delete_file("alice", "f1")
    assert not store.delete_file("alice", "f1")
    assert store.file("alice", "f1") is None
    assert store.add_file("alice", a_file("f5"), max_files=3)  # room again


def test_batches_are_listed_per_owner_and_found_by_the_runner(open_store: OpenStore) -> None:
    store = open_store()
    store.add_batch("alice", a_batch("b1"))
    store.add_batch("bob", a_batch("b2"))
    store.add_batch("alice", a_batch("b3", status="completed"))
    assert store.owner_of("b1") == "alice" and store.owner_of("b2") == "bob" and store.owner_of("nope") is None
    assert store.batch("alice", "b2") is None
    found = store.batch(None, "b2")
    assert found is not None and found.id == "b2" and found.status == "validating"
    batches, more = store.batches("alice", after=None, limit=1)
    assert ([b.id for b in batches], more) == (["b3"], True)
    batches, more = store.batches("alice", after="b3", limit=5)
    assert ([b.id for b in batches], more) == (["b1"], False)
    assert store.active_batch_ids() == ["b1", "b2"]  # created first, first


def test_an_update_applies_only_from_the_statuses_it_leaves(open_store: OpenStore) -> None:
    store = open_store()
    store.add_file("alice", a_file("file-in"), max_files=10)
    store.add_batch("alice", a_batch("b1"))
    assert store.file_in_use("alice", "file-in") == "b1"
    assert store.file_in_use("bob", "file-in") is None

    def begin(batch: Batch) -> None:
        batch.status, batch.in_progress_at = "in_progress", 5
        batch.request_counts.total = 3

    refused = [LineResult(2, False, b"bad line")]
    updated = store.update("b1", ["validating"], begin, results=refused)
    assert updated is not None and updated.status == "in_progress"
    assert store.update("b1", ["validating"], begin) is None  # no longer validating
    assert store.update("nope", ["validating"], begin) is None
    found = store.batch("alice", "b1")
    assert found is not None and found.in_progress_at == 5
    assert (found.request_counts.total, found.request_counts.completed, found.request_counts.failed) == (3, 0, 1)

    def end(batch: Batch) -> None:
        batch.status, batch.output_file_id = "completed", "file-out"

    output = a_file("file-out", "batch_output")
    assert store.update("b1", ["in_progress"], end, files=[("alice", output)]) is not None
    assert store.file("alice", "file-out") == output
    assert store.active_batch_ids() == []
    assert store.file_in_use("alice", "file-in") is None


def test_concurrent_updates_from_replicas_all_apply(open_store: OpenStore) -> None:
    stores = [open_store("first"), open_store("second")]
    stores[0].add_batch("alice", a_batch("b1", status="in_progress"))

    def count(batch: Batch) -> None:
        batch.request_counts.total += 1

    def work(store: BatchStore) -> None:
        for _ in range(25):
            assert store.update("b1", ["in_progress"], count) is not None

    threads = [threading.Thread(target=work, args=(stores[i % 2],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    found = stores[1].batch(None, "b1")
    assert found is not None and found.request_counts.total == 100


def test_a_line_is_recorded_once_and_read_back_in_input_order(open_store: OpenStore) -> None:
    first, second = open_store("first"), open_store("second")
    first.add_batch("alice", a_batch("b1", status="in_progress"))
    results = [LineResult(line, line % 3 != 0, f"out-{line}".encode()) for line in range(9)]
    first.record_lines("b1", reversed(results[:5]))
    for result in results[5:]:
        assert second.record_line("b1", result)
    assert first.record_line("b1", LineResult(4, False, b"again")) is False  # never replaced
    assert second.recorded_lines("b1") == set(range(9))
    assert first.recorded_lines("b2") == set()
    assert list(second.outputs("b1", ok=True, chunk=2)) == [r.output for r in results if r.ok]
    assert list(first.outputs("b1", ok=False, chunk=2)) == [b"out-0", b"out-3", b"out-6"]
    assert list(first.outputs("b1", ok=False, chunk=3)) == [b"out-0", b"out-3", b"out-6"]
    found = first.batch(None, "b1")
    assert found is not None and (found.request_counts.completed, found.request_counts.failed) == (6, 3)


def test_the_factory_picks_the_store_the_settings_name(tmp_path: Path, redis_instance: RedisServer) -> None:
    local, contents, leases = open_batch_store(Settings(), tmp_path / "a")
    assert isinstance(local, SqliteBatchStore) and leases is None
    assert contents.folder == tmp_path / "a" / "batch_files"
    local.close()
    shared = Settings(store_url=redis_instance.url, batches=BatchSettings(files_dir=str(tmp_path / "shared")))
    remote, contents, leases = open_batch_store(shared, tmp_path / "b")
    assert isinstance(remote, RedisBatchStore) and leases is remote
    assert contents.folder == tmp_path / "shared"
    remote.close()


# -- the shared store only -------------------------------------------------------------------


def test_one_replica_holds_a_lease_until_it_releases_it_or_it_expires(redis_instance: RedisServer) -> None:
    redis_instance.flush()
    first, second = open_redis(redis_instance, "first", 0.5), open_redis(redis_instance, "second", 0.5)
    first.add_batch("alice", a_batch("b1"))
    assert first.claim("b1")
    assert not second.claim("b1")
    assert first.claim("b1")  # its holder may take it again (after a pause of its own)
    assert first.renew("b1") == "validating"
    assert second.renew("b1") is None  # not its lease
    second.release("b1")  # not its lease: nothing happens
    assert not second.claim("b1")
    first.release("b1")
    assert second.claim("b1")
    # Not renewed: the lease expires and another replica takes it.
    deadline = time.monotonic() + 10
    while not first.claim("b1"):
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.05)
    assert second.renew("b1") is None
    first.close()
    second.close()


def test_runs_of_a_line_are_numbered_across_replicas(redis_instance: RedisServer) -> None:
    redis_instance.flush()
    first, second = open_redis(redis_instance, "first"), open_redis(redis_instance, "second")
    assert first.line_attempt("b1", 3) == 1
    assert second.line_attempt("b1", 3) == 2
    assert first.line_attempt("b1", 4) == 1
    assert second.line_attempt("b2", 3) == 1
    first.close()
    second.close()


def test_an_unreachable_redis_is_unavailable_at_once_then_tried_again(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)  # a free port, nothing started on it
    store = RedisBatchStore(server.url, replica="first", timeout_s=0.5, retry_after_s=60.0, lease_s=10.0)
    with pytest.raises(StoreUnavailable) as first:
        store.active_batch_ids()
    assert first.value.status == 503 and first.value.retry_after == 60.0
    with pytest.raises(StoreUnavailable) as second:  # within the retry period: without the network
        store.claim("b1")
    assert second.value.retry_after is not None and 0 < second.value.retry_after <= 60.0
    store.close()
