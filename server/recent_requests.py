"""Requests seen lately, for a duplicate-request filter: the first of a digest within a
window passes, the ones after it are told how long until it would.

`MemoryRecent` remembers in the process (one server); `RedisRecent` in the shared Redis
(``SET NX PX``, which Redis runs alone), so a body sent to one replica and then to another
is refused by the second just as one server would refuse it.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # redis-py is imported only where a Redis store is used
    from server.redis_link import RedisLink


class RecentRequests(Protocol):
    def first_seen(self, digest: bytes, window_s: float) -> float | None:
        """Remember ``digest`` for ``window_s`` seconds and return None when it was not
        remembered already; else remember nothing new and return the seconds left on it."""
        ...


class MemoryRecent:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        # When each digest is forgotten, in the order they were seen.
        self._until: collections.OrderedDict[bytes, float] = collections.OrderedDict()
        self._lock = threading.Lock()

    def first_seen(self, digest: bytes, window_s: float) -> float | None:
        with self._lock:
            now = self.clock()
            # Windows are one length per filter, so the first seen is the first forgotten.
            while self._until and next(iter(self._until.values())) <= now:
                self._until.popitem(last=False)
            until = self._until.get(digest)
            if until is not None:
                return until - now
            self._until[digest] = now + window_s
            return None


# KEYS: the digest's key. ARGV: the window in milliseconds. -1 when it was not there (now it
# is), else the milliseconds left on it.
_FIRST_SEEN = """
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
    return -1
end
return redis.call('PTTL', KEYS[1])
"""


class RedisRecent:
    def __init__(self, link: RedisLink, name: str) -> None:
        self._link = link
        self._prefix = f"{link.prefix}{name}:"
        self._first_seen = link.script(_FIRST_SEEN)

    def first_seen(self, digest: bytes, window_s: float) -> float | None:
        window_ms = max(1, round(window_s * 1000))
        with self._link.reaching():
            left_ms = int(self._first_seen(keys=[self._prefix + digest.hex()], args=[window_ms]))
        # PTTL is never below 1 here: the script runs alone, so the key cannot expire between.
        return None if left_ms < 0 else max(left_ms, 1) / 1000
