"""Sliding request windows per key and API family: an hour and a day.

`MemoryWindows` keeps them in the process (one server; a restart forgets them: the limits
guard fair use, not money). `RedisWindows` keeps them in the shared Redis, so replicas count
one key's requests together: each admission is one Lua script, which Redis runs alone, so N
concurrent requests on any replicas admit exactly as many as the limits allow. Its clock is
Redis's own (``TIME``), so the replicas' clocks do not matter.
"""

from __future__ import annotations

import collections
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol

if TYPE_CHECKING:  # redis-py is imported only where a Redis store is used
    from server.redis_link import RedisLink

HOUR_S = 3600.0
DAY_S = 86400.0


class Refusal(NamedTuple):
    """Why a request does not fit: the seconds until it would, and the window that is full."""

    wait_s: float
    window: Literal["hourly", "daily"]


class RequestWindows(Protocol):
    def admit(self, key_id: str, family: str, hour_limit: int, day_limit: int) -> Refusal | None:
        """Count one request of ``key_id`` in ``family`` when it fits both windows (a limit
        of 0 or less: no limit); else count nothing and say how long to wait."""
        ...


class _Window:
    """Timestamps of the requests admitted in the last ``span`` seconds."""

    __slots__ = ("span", "times")

    def __init__(self, span: float) -> None:
        self.span = span
        self.times: collections.deque[float] = collections.deque()

    def wait(self, limit: int, now: float) -> float:
        """Seconds until one more request fits; 0 when it fits now."""
        while self.times and self.times[0] <= now - self.span:
            self.times.popleft()
        if limit <= 0 or len(self.times) < limit:
            return 0.0
        return self.times[len(self.times) - limit] + self.span - now


class MemoryWindows:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._windows: dict[tuple[str, str], tuple[_Window, _Window]] = {}
        self._lock = threading.Lock()  # a check and its count are one step

    def admit(self, key_id: str, family: str, hour_limit: int, day_limit: int) -> Refusal | None:
        with self._lock:
            windows = self._windows.get((key_id, family))
            if windows is None:
                windows = self._windows[(key_id, family)] = (_Window(HOUR_S), _Window(DAY_S))
            now = self.clock()
            hour, day = windows
            hour_wait, day_wait = hour.wait(hour_limit, now), day.wait(day_limit, now)
            if hour_wait > 0 or day_wait > 0:
                return Refusal(max(hour_wait, day_wait), "hourly" if hour_wait > 0 else "daily")
            hour.times.append(now)
            day.times.append(now)
            return None


# KEYS: the hour's and the day's sorted sets (members unique per request, scored by the
# milliseconds of Redis's clock). ARGV: the hour limit, the day limit, a new member, the
# hour's and the day's spans in milliseconds. {0, 0} when counted, else the milliseconds
# each window makes the request wait (0: that window has room). Limits <= 0 never refuse,
# but the request is still counted, so a limit set later sees the requests before it.
_ADMIT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local waits = {}
for i = 1, 2 do
    local span = tonumber(ARGV[3 + i])
    local limit = tonumber(ARGV[i])
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - span)
    waits[i] = 0
    if limit > 0 then
        local count = redis.call('ZCARD', KEYS[i])
        if count >= limit then
            local oldest = redis.call('ZRANGE', KEYS[i], count - limit, count - limit, 'WITHSCORES')
            waits[i] = tonumber(oldest[2]) + span - now
        end
    end
end
if waits[1] > 0 or waits[2] > 0 then
    return waits
end
for i = 1, 2 do
    redis.call('ZADD', KEYS[i], now, ARGV[3])
    redis.call('PEXPIRE', KEYS[i], ARGV[3 + i])
end
return waits
"""


class RedisWindows:
    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._admit = link.script(_ADMIT)

    def admit(self, key_id: str, family: str, hour_limit: int, day_limit: int) -> Refusal | None:
        name = f"{self._link.prefix}window:{family}:{key_id}"
        keys = [f"{name}:hour", f"{name}:day"]
        args: list[str | int] = [hour_limit, day_limit, uuid.uuid4().hex, int(HOUR_S * 1000), int(DAY_S * 1000)]
        with self._link.reaching():
            hour_ms, day_ms = (int(wait) for wait in self._admit(keys=keys, args=args))
        if hour_ms <= 0 and day_ms <= 0:
            return None
        return Refusal(max(hour_ms, day_ms) / 1000, "hourly" if hour_ms > 0 else "daily")
