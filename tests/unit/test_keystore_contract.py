"""One contract for every key store: SQLite in the data dir, and Redis shared by replicas.

Each test runs against both, the Redis one on a real redis-server on a loopback port. A
"replica" is a second store object on the same SQLite file or the same Redis; the amounts
are exact in binary floating point, so balances compare with ``==``.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from server.keystore import InsufficientCredits, KeyNotFound, KeyStore, SqliteKeyStore, replica_id
from server.keystore_redis import RedisKeyStore
from tests.redis_server import RedisServer, redis_server

OpenStore = Callable[..., KeyStore]


@pytest.fixture(scope="module")
def redis_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens a store object on this test's store; ``replica`` names the replica it serves."""
    opened: list[KeyStore] = []
    server: RedisServer | None = None
    if request.param == "redis":
        server = request.getfixturevalue("redis_instance")
        server.flush()

    def open_one(replica: str = "first") -> KeyStore:
        if server is None:
            store: KeyStore = SqliteKeyStore(tmp_path / "keys.sqlite3")
        else:
            store = RedisKeyStore(server.url, replica=replica, timeout_s=2.0, retry_after_s=1.0)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


def test_create_identify_revoke(open_store: OpenStore) -> None:
    store = open_store()
    assert not store.has_active_keys()
    info, key = store.create("ci")
    admin, admin_key = store.create("ops", admin=True)
    assert store.has_active_keys()
    assert store.identify(key) == (info.id, False)
    assert store.identify(admin_key) == (admin.id, True)
    assert store.verify(key + "x") is None
    assert store.verify("os-nope.secret") is None
    assert store.verify("garbage") is None
    assert [listed.id for listed in store.list()] == [info.id, admin.id]
    store.revoke(info.id)
    assert store.verify(key) is None
    assert store.account(info.id) is None
    assert [listed.active for listed in store.list()] == [False, True]
    with pytest.raises(KeyNotFound):
        store.revoke(info.id)
    with pytest.raises(KeyNotFound):
        store.rotate(info.id)
    store.revoke(admin.id)
    assert not store.has_active_keys()


def test_rotate_invalidates_the_old_secret(open_store: OpenStore) -> None:
    store = open_store()
    info, old = store.create("svc")
    new = store.rotate(info.id)
    assert new != old
    assert store.verify(old) is None
    assert store.verify(new) == info.id
    assert store.list()[0].rotated_at is not None


def test_a_key_made_on_one_replica_works_on_another_and_is_revoked_everywhere(open_store: OpenStore) -> None:
    first, second = open_store("first"), open_store("second")
    info, key = first.create("shared")
    assert second.verify(key) == info.id
    rotated = second.rotate(info.id)
    assert first.verify(key) is None
    assert first.verify(rotated) == info.id
    second.revoke(info.id)
    assert first.verify(rotated) is None  # at once: no replica caches a key
    assert not first.has_active_keys()


def test_accounts(open_store: OpenStore) -> None:
    store = open_store()
    info, _ = store.create("acct")
    account = store.account(info.id)
    assert account is not None
    assert (account.credits, account.subscription_active, account.hour_limit, account.day_limit) == (
        None,
        True,
        None,
        None,
    )
    assert store.add_credits(info.id, 2.5) == 2.5  # an unmetered key starts from 0
    assert store.add_credits(info.id, 1.0) == 3.5
    store.set_limits(info.id, 5, 0)
    store.set_subscription(info.id, False)
    account = store.account(info.id)
    assert account is not None
    assert (account.credits, account.subscription_active, account.hour_limit, account.day_limit) == (
        3.5,
        False,
        5,
        0,
    )
    store.set_limits(info.id, None, None)
    store.set_credits(info.id, None)
    account = store.account(info.id)
    assert account is not None and (account.credits, account.hour_limit, account.day_limit) == (None, None, None)
    assert store.account("000000000000") is None
    store.revoke(info.id)
    for change in (
        lambda: store.set_credits(info.id, 1.0),
        lambda: store.add_credits(info.id, 1.0),
        lambda: store.set_limits(info.id, 1, 1),
        lambda: store.set_subscription(info.id, True),
    ):
        with pytest.raises(KeyNotFound):
            change()


def test_reserve_and_settle(open_store: OpenStore) -> None:
    store = open_store()
    info, _ = store.create("payer")
    unmetered, _ = store.create("free")
    assert store.reserve("r-free", unmetered.id, 5.0) is None
    assert store.open_reservations() == ()
    store.set_credits(info.id, 10.0)
    assert store.reserve("r1", info.id, 4.0) == 6.0
    assert store.reserve("r1", info.id, 4.0) == 6.0  # the same request id pays once
    with pytest.raises(InsufficientCredits) as short:
        store.reserve("r2", info.id, 7.0)
    assert short.value.balance == 6.0
    assert store.reserve("r3", info.id, 2.0) == 4.0
    assert sorted(store.open_reservations()) == ["r1", "r3"]
    assert store.settle("r1", refund=False, keep=1.5)  # keeps 1.5 of 4, gives back 2.5
    assert store.settle("r3", refund=True)
    assert store.open_reservations() == ()
    account = store.account(info.id)
    assert account is not None and account.credits == 8.5
    assert not store.settle("unknown", refund=True)


def test_settling_twice_refunds_once(open_store: OpenStore) -> None:
    first, second = open_store("first"), open_store("second")
    info, _ = first.create("payer")
    first.set_credits(info.id, 10.0)
    first.reserve("once", info.id, 4.0)
    assert second.settle("once", refund=True)  # another replica may settle it
    assert not first.settle("once", refund=True)
    assert not second.settle("once", refund=False)
    account = first.account(info.id)
    assert account is not None and account.credits == 10.0
    assert first.open_reservations() == ()


def test_concurrent_settles_refund_once(open_store: OpenStore) -> None:
    stores = [open_store("first"), open_store("second")]
    info, _ = stores[0].create("payer")
    stores[0].set_credits(info.id, 10.0)
    stores[0].reserve("raced", info.id, 4.0)
    outcomes = _in_threads(10, lambda n: stores[n % 2].settle("raced", refund=True))
    assert outcomes.count(True) == 1
    account = stores[1].account(info.id)
    assert account is not None and account.credits == 10.0


def test_concurrent_reservations_never_overdraw(open_store: OpenStore) -> None:
    stores = [open_store("first"), open_store("second")]
    info, _ = stores[0].create("payer")
    stores[0].set_credits(info.id, 10.0)

    def reserve(n: int) -> bool:
        try:
            stores[n % 2].reserve(uuid.uuid4().hex, info.id, 1.0)
        except InsufficientCredits:
            return False
        return True

    outcomes = _in_threads(20, reserve)
    assert outcomes.count(True) == 10
    account = stores[0].account(info.id)
    assert account is not None and account.credits == 0.0
    assert len(set(stores[0].open_reservations()) | set(stores[1].open_reservations())) == 10


def test_an_unmetered_key_stays_unmetered_when_a_reservation_is_refunded(open_store: OpenStore) -> None:
    store = open_store()
    info, _ = store.create("payer")
    store.set_credits(info.id, 3.0)
    store.reserve("r", info.id, 2.0)
    store.set_credits(info.id, None)
    assert store.settle("r", refund=True)
    account = store.account(info.id)
    assert account is not None and account.credits is None


def _in_threads(count: int, work: Callable[[int], bool]) -> list[bool]:
    """``work(0..count-1)`` in as many threads, released together."""
    start = threading.Barrier(count)
    outcomes: list[bool] = [False] * count

    def run(n: int) -> None:
        start.wait(timeout=10)
        outcomes[n] = work(n)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


def test_redis_holds_only_hashes(redis_instance: RedisServer) -> None:
    redis_instance.flush()
    store = RedisKeyStore(redis_instance.url, replica="first", timeout_s=2.0, retry_after_s=1.0)
    _, key = store.create("secret-holder")
    store.close()
    secret = key.split(".", 1)[1]
    client = redis.Redis.from_url(redis_instance.url)
    stored = [name + (client.dump(name) or b"") for name in client.scan_iter()]  # names and serialised values
    client.close()
    assert stored and not any(secret.encode() in entry for entry in stored)


def test_each_replica_reconciles_only_its_own_reservations(redis_instance: RedisServer) -> None:
    redis_instance.flush()
    first = RedisKeyStore(redis_instance.url, replica="first", timeout_s=2.0, retry_after_s=1.0)
    second = RedisKeyStore(redis_instance.url, replica="second", timeout_s=2.0, retry_after_s=1.0)
    info, _ = first.create("payer")
    first.set_credits(info.id, 10.0)
    first.reserve("mine", info.id, 1.0)
    second.reserve("theirs", info.id, 1.0)
    assert first.open_reservations() == ("mine",)
    assert second.open_reservations() == ("theirs",)
    first.close()
    second.close()


def test_a_replica_keeps_its_id_in_its_data_dir(tmp_path: Path) -> None:
    made = replica_id(tmp_path / "data")
    assert made and replica_id(tmp_path / "data") == made
    assert replica_id(tmp_path / "other") != made
