"""One synchronous connection to the shared Redis (settings' ``store_url``), and what every
user of it does when Redis is away.

A call that cannot reach Redis within ``timeout_s`` (one retry on a fresh connection, for
the connections a restarted Redis dropped) raises `StoreUnavailable` (503 with Retry-After);
for ``retry_after_s`` after that, calls fail at once without waiting on the network, and
then Redis is tried again. The key store, the request windows, the duplicate filter and the
URL signing key share one link, so one failure is one wait for all of them.

Every key of the project starts with `PREFIX`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from server.keystore import StoreUnavailable

PREFIX = "omniserve:"


class RedisLink:
    def __init__(self, url: str, *, timeout_s: float, retry_after_s: float, prefix: str = PREFIX) -> None:
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # One retry at once on a fresh connection (a restarted Redis dropped the pooled
            # ones); never redis-py's default of backing off and retrying for seconds.
            retry=Retry(NoBackoff(), 1),
            decode_responses=True,
        )
        self.prefix = prefix
        self._retry_after_s = retry_after_s
        self._down_until = float("-inf")
        self._lock = threading.Lock()

    def script(self, text: str) -> Script:
        """A Lua script, run by EVALSHA (loaded again by itself after a Redis restart)."""
        return self.client.register_script(text)

    @contextlib.contextmanager
    def reaching(self) -> Iterator[redis.Redis]:
        """Redis, or StoreUnavailable while it is down (at once during the retry period)."""
        wait = self._down_until - time.monotonic()
        if wait > 0:
            raise StoreUnavailable(wait)
        try:
            yield self.client
        # InvalidResponse: something that is not Redis answered (a proxy, a wrong port).
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.InvalidResponse) as exc:
            with self._lock:
                self._down_until = time.monotonic() + self._retry_after_s
            raise StoreUnavailable(self._retry_after_s) from exc

    def close(self) -> None:
        self.client.close()
