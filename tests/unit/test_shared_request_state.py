"""Request windows and the duplicate-request filter shared by replicas through one Redis.

Each replica is its own key store object (its own connection and circuit breaker) on a real
redis-server; the in-memory implementations are held to the same contract.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import pytest

from schemas.errors import ApiError, ErrorCode
from server.accounts import Accounts
from server.keystore import StoreUnavailable
from server.keystore_redis import RedisKeyStore
from server.recent_requests import MemoryRecent, RecentRequests, RedisRecent
from server.redis_link import RedisLink
from server.request_windows import DAY_S, HOUR_S, MemoryWindows, RedisWindows, RequestWindows
from server.settings import AccountSettings
from tests.redis_server import RedisServer, redis_server

RECOVERY_DEADLINE_S = 15.0


@pytest.fixture(scope="module")
def redis_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def shared(redis_instance: RedisServer) -> Iterator[RedisServer]:
    redis_instance.flush()
    yield redis_instance


def _replica(server: RedisServer, name: str, retry_after_s: float = 1.0) -> RedisKeyStore:
    return RedisKeyStore(server.url, replica=name, timeout_s=1.0, retry_after_s=retry_after_s)


def _admit(accounts: Accounts, key_id: str) -> ApiError | None:
    try:
        accounts.admit(key_id, "openai")
    except ApiError as refused:
        return refused
    return None


def test_two_replicas_admit_exactly_the_hourly_limit_between_them(shared: RedisServer) -> None:
    first, second = _replica(shared, "first"), _replica(shared, "second")
    info, _ = first.create("app")
    first.set_limits(info.id, 7, None)
    replicas = [Accounts(store, AccountSettings(), windows=RedisWindows(store.link)) for store in (first, second)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        outcomes = list(pool.map(lambda i: _admit(replicas[i % 2], info.id), range(40)))
    refusals = [outcome for outcome in outcomes if outcome is not None]
    assert len(refusals) == 40 - 7
    for refused in refusals:
        assert refused.code is ErrorCode.RATE_LIMIT_EXCEEDED and "hourly" in str(refused)
        assert refused.retry_after is not None and 0 < refused.retry_after <= HOUR_S
    # Each family has its windows: the key's hour is spent on openai only.
    replicas[1].admit(info.id, "v3")
    first.close()
    second.close()


def test_a_full_day_refuses_with_the_days_wait(shared: RedisServer) -> None:
    store = _replica(shared, "first")
    info, _ = store.create("app")
    store.set_limits(info.id, 0, 2)  # no hourly limit, two a day
    replicas = [Accounts(store, AccountSettings(), windows=RedisWindows(link)) for link in (store.link, store.link)]
    replicas[0].admit(info.id, "sdapi")
    replicas[1].admit(info.id, "sdapi")
    with pytest.raises(ApiError, match="daily") as refused:
        replicas[0].admit(info.id, "sdapi")
    assert refused.value.retry_after is not None and HOUR_S < refused.value.retry_after <= DAY_S
    store.close()


@pytest.fixture(params=["memory", "redis"])
def windows(request: pytest.FixtureRequest) -> Iterator[RequestWindows]:
    if request.param == "memory":
        yield MemoryWindows(time.monotonic)
        return
    server: RedisServer = request.getfixturevalue("shared")
    link = RedisLink(server.url, timeout_s=1.0, retry_after_s=1.0)
    yield RedisWindows(link)
    link.close()


def test_windows_count_only_what_they_admit(windows: RequestWindows) -> None:
    assert windows.admit("k", "v3", 2, 3) is None
    assert windows.admit("k", "v3", 2, 3) is None
    for _ in range(3):  # refusals are not counted: the day still has room for one
        refusal = windows.admit("k", "v3", 2, 3)
        assert refusal is not None and refusal.window == "hourly" and 0 < refusal.wait_s <= HOUR_S
    assert windows.admit("k", "openai", 2, 3) is None  # another family
    assert windows.admit("other", "v3", 2, 3) is None  # another key
    assert windows.admit("k", "v3", 0, 3) is None  # no hourly limit: the day's third
    refusal = windows.admit("k", "v3", 0, 3)
    assert refusal is not None and refusal.window == "daily" and HOUR_S < refusal.wait_s <= DAY_S


@pytest.fixture(params=["memory", "redis"])
def recent_pair(request: pytest.FixtureRequest) -> Iterator[tuple[RecentRequests, RecentRequests]]:
    """Two replicas' filters: one shared in Redis, or (memory) the same one, as on one server."""
    if request.param == "memory":
        memory = MemoryRecent(time.monotonic)
        yield memory, memory
        return
    server: RedisServer = request.getfixturevalue("shared")
    links = [RedisLink(server.url, timeout_s=1.0, retry_after_s=1.0) for _ in range(2)]
    yield RedisRecent(links[0], "dup"), RedisRecent(links[1], "dup")
    for link in links:
        link.close()


def test_a_body_seen_by_one_replica_is_a_duplicate_on_the_other(
    recent_pair: tuple[RecentRequests, RecentRequests],
) -> None:
    first, second = recent_pair
    assert first.first_seen(b"body", 30.0) is None
    wait = second.first_seen(b"body", 30.0)
    assert wait is not None and 0 < wait <= 30.0
    assert first.first_seen(b"another body", 30.0) is None


def _until_back(call: Callable[[], object]) -> object:
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    while True:
        try:
            return call()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_stopped_redis_is_503_with_retry_after_then_service_returns(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        store = _replica(server, "first", retry_after_s=0.5)
        settings = msgspec.convert({"windows": {"openai": {"requests_per_hour": 5}}}, AccountSettings)
        accounts = Accounts(store, settings, windows=RedisWindows(store.link))
        recent = RedisRecent(store.link, "dup")
        # A settings key has no row in the store: only the windows reach Redis.
        accounts.admit("static-ops", "openai")
        server.stop()
        with pytest.raises(StoreUnavailable) as down:
            accounts.admit("static-ops", "openai")
        assert down.value.status == 503 and down.value.retry_after is not None and down.value.retry_after > 0
        with pytest.raises(StoreUnavailable):  # the same link's breaker: at once
            recent.first_seen(b"body", 30.0)
        server.start()
        # The restarted Redis kept nothing (no persistence): windows and filter start empty.
        assert _until_back(lambda: recent.first_seen(b"body", 30.0)) is None
        for _ in range(5):
            accounts.admit("static-ops", "openai")
        with pytest.raises(ApiError, match="hourly"):
            accounts.admit("static-ops", "openai")
        store.close()
