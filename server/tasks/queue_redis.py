"""The task queue that replicas sharing a Redis store (settings' ``store_url``) take work from.

Layout, under the ``omniserve:`` prefix:

- ``queue:<model>``: a stream per catalog model (its canonical name), one entry per queued
  task (fields task_id, owner), read by the consumer group ``runners``; each replica is one
  consumer, named by its replica id. A replica reads only the streams of the models it
  serves, so a task only runs where its model does.
- ``queue:entries``: a hash task_id -> "<model>\\n<entry id>\\n<owner>": where a task's entry
  is, so any replica can take out a cancelled task, and so an entry leaves exactly once.
- ``queue:counts``: a hash of the entries in the queue, ``total`` and ``key:<owner>``: the
  bounds of tasks.max_queued and max_queued_per_key. An entry counts from ``put`` until it
  leaves (done, discarded), running ones included. Each change of an entry and of its counts
  is one Lua script, so the counts stay exact whatever runs concurrently; the bound itself is
  checked at submission, before the task is recorded, so submissions racing on several
  replicas can pass it together and overshoot it by at most the submissions in flight.

At least once: an entry read by a replica stays pending (in the group's pending list) until
that replica acks it. The pending list is the lease: every ``heartbeat_s`` a replica resets the
idle time of each entry it holds (XCLAIM to itself, min-idle 0, JUSTID), and any replica with
an idle worker takes over entries idle longer than ``lease_s`` (XAUTOCLAIM): their replica
died. Using the pending list's own idle time, rather than separate lease keys with PX, leaves
one record of who holds what, which no crash can make disagree with itself. A renewal and an
ack first check that the entry is still this replica's (a replica stalled past its lease may
have lost it to another), so an entry is never renewed or acked on behalf of someone else.

A clean stop gives held entries that never started back: one script acks and deletes the entry
and adds it again at the stream's end, so it is never lost or duplicated, and a replica blocked
on the stream gets it at once (its place in line is lost: it goes to the back).

Fairness: with this queue, tasks are taken in stream order per model; the per-key round-robin
of the local queue (``fairqueue.py``) does not hold across replicas.

Redis unreachable: submissions and cancels raise `StoreUnavailable` (503 with Retry-After), at
once during ``retry_after_s`` after a failure; the background loops log and try again later.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from schemas.errors import ApiError, ErrorCode
from server.keystore import StoreUnavailable
from server.keystore_redis import PREFIX
from server.tasks.fairqueue import QUEUE_FULL_RETRY_AFTER_S
from server.tasks.queue import QueuedTask

log = logging.getLogger("omniserve.tasks.queue")

GROUP = "runners"
# Longest wait of one XREADGROUP: how soon ``close`` wakes a waiting worker.
BLOCK_S = 1.0
_OPEN = ""  # the owner of tasks of an open server (no keys)
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, InvalidResponse)
# XREADGROUP's answer (decoded): per stream, its entries as (entry id, fields).
_ReadReply = list[tuple[str, list[tuple[str, dict[str, str]]]]] | None

# Shared by the scripts: the parts of an entries' record, and whether an entry is still held
# by a consumer (ARGV names it; '' = anyone).
_LUA_HELPERS = """
local function parse(record)
    return string.match(record, '^(.-)\\n(.-)\\n(.*)$')
end
local function held_by(stream, group, id, consumer)
    if consumer == '' then
        return true
    end
    local pending = redis.pcall('XPENDING', stream, group, id, id, 1)
    return pending.err == nil and pending[1] ~= nil and pending[1][2] == consumer
end
local function count(counts, owner, by)
    for _, field in ipairs({'total', 'key:' .. owner}) do
        if redis.call('HINCRBY', counts, field, by) <= 0 then
            redis.call('HDEL', counts, field)
        end
    end
end
"""

# KEYS: the stream, entries, counts. ARGV: task id, owner, model, group. 0 when already queued.
_PUT = (
    _LUA_HELPERS
    + """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
    return 0
end
local id = redis.call('XADD', KEYS[1], '*', 'task_id', ARGV[1], 'owner', ARGV[2])
-- A model no replica read yet: its group, from the stream's start, so nothing is skipped.
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[4], '0')
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3] .. '\\n' .. id .. '\\n' .. ARGV[2])
count(KEYS[3], ARGV[2], 1)
return 1
"""
)

# KEYS: entries, counts. ARGV: task id, group, the streams' prefix, the consumer that must
# hold it ('' = anyone: a cancel). 1 when the entry left the queue, 0 when it was not there
# (or is held by another consumer).
_REMOVE = (
    _LUA_HELPERS
    + """
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then
    return 0
end
local model, id, owner = parse(record)
local stream = ARGV[3] .. model
if not held_by(stream, ARGV[2], id, ARGV[4]) then
    return 0
end
redis.pcall('XACK', stream, ARGV[2], id)
redis.call('XDEL', stream, id)
redis.call('HDEL', KEYS[1], ARGV[1])
count(KEYS[2], owner, -1)
return 1
"""
)

# KEYS: entries. ARGV: task id, group, the streams' prefix, the consumer holding it. The new
# entry id, or false when the entry is not this consumer's (any more).
_RELEASE = (
    _LUA_HELPERS
    + """
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then
    return false
end
local model, id, owner = parse(record)
local stream = ARGV[3] .. model
if not held_by(stream, ARGV[2], id, ARGV[4]) then
    return false
end
redis.call('XACK', stream, ARGV[2], id)
redis.call('XDEL', stream, id)
local new_id = redis.call('XADD', stream, '*', 'task_id', ARGV[1], 'owner', owner)
redis.call('HSET', KEYS[1], ARGV[1], model .. '\\n' .. new_id .. '\\n' .. owner)
return new_id
"""
)

# ARGV: group, consumer, the streams' prefix, then (model, entry id) pairs. Resets the idle
# time of each entry the consumer still holds; the indexes (from 0) of the pairs it lost.
_RENEW = (
    _LUA_HELPERS
    + """
local lost = {}
for i = 4, #ARGV, 2 do
    local stream = ARGV[3] .. ARGV[i]
    if held_by(stream, ARGV[1], ARGV[i + 1], ARGV[2]) then
        redis.call('XCLAIM', stream, ARGV[1], ARGV[2], 0, ARGV[i + 1], 'JUSTID')
    else
        table.insert(lost, (i - 4) / 2)
    end
end
return lost
"""
)


class RedisTaskQueue:
    shared = True

    def __init__(
        self,
        url: str,
        *,
        replica: str,
        models: list[str],
        max_total: int,
        max_per_key: int,
        heartbeat_s: float,
        lease_s: float,
        timeout_s: float,
        retry_after_s: float,
        block_s: float = BLOCK_S,
        prefix: str = PREFIX,
    ) -> None:
        self.replica = replica
        self.models = list(models)
        self.max_total = max_total
        self.max_per_key = max_per_key
        self.heartbeat_s = heartbeat_s
        self.lease_s = lease_s
        self.block_s = block_s
        self._streams_prefix = f"{prefix}queue:"
        self._entries = f"{prefix}queue:entries"
        self._counts = f"{prefix}queue:counts"
        # One retry at once on a fresh connection (a restarted Redis dropped the pooled ones).
        options: dict[str, Any] = {"socket_connect_timeout": timeout_s, "retry": Retry(NoBackoff(), 1)}
        self._redis = aioredis.Redis.from_url(url, socket_timeout=timeout_s, decode_responses=True, **options)
        # Blocking reads wait up to block_s for an entry, so their socket waits that much longer.
        self._reader = aioredis.Redis.from_url(
            url, socket_timeout=block_s + timeout_s, decode_responses=True, **options
        )
        self._put = self._redis.register_script(_PUT)
        self._remove = self._redis.register_script(_REMOVE)
        self._release = self._redis.register_script(_RELEASE)
        self._renew = self._redis.register_script(_RENEW)
        self._retry_after_s = retry_after_s
        self._down_until = float("-inf")
        # Entries this replica holds (read, taken over, or waiting in _ready), by task id.
        self._held: dict[str, QueuedTask] = {}
        # Read but not yet handed to a worker: one read may bring an entry of every stream.
        self._ready: collections.deque[QueuedTask] = collections.deque()
        # Where each stream's takeover scan goes on from, and when the last scan ran.
        self._takeover_from: dict[str, str] = {}
        self._takeover_due = 0.0
        self._groups_made = False
        self._closed = False
        self._heartbeat: asyncio.Task[None] | None = None
        # Called with the task id of an entry another replica took over from this one.
        self.on_lost: Callable[[str], None] | None = None

    def _stream(self, model: str) -> str:
        return self._streams_prefix + model

    @contextlib.asynccontextmanager
    async def _reaching(self) -> AsyncIterator[None]:
        """Redis, or StoreUnavailable while it is down (at once during the retry period)."""
        wait = self._down_until - time.monotonic()
        if wait > 0:
            raise StoreUnavailable(wait)
        try:
            yield
        except _UNREACHABLE as exc:
            self._down_until = time.monotonic() + self._retry_after_s
            raise StoreUnavailable(self._retry_after_s) from exc

    # -- the lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._heartbeat = asyncio.create_task(self._renew_periodically(), name="task-queue-heartbeat")

    async def stop(self) -> None:
        self.close()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        while self._ready:  # read, never handed out: another replica takes them at once
            await self.release(self._ready.popleft())
        await self._redis.aclose()
        await self._reader.aclose()

    def close(self) -> None:
        self._closed = True

    async def _make_groups(self) -> None:
        for model in self.models:
            try:
                await self._redis.xgroup_create(self._stream(model), GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups_made = True

    # -- submission and cancel ---------------------------------------------------------------

    async def check_room(self, owner: str | None) -> None:
        async with self._reaching():
            total, waiting = await self._redis.hmget(self._counts, ["total", f"key:{owner or _OPEN}"])
        total_n, waiting_n = int(total or 0), int(waiting or 0)
        if total_n >= self.max_total:
            message = f"The task queue is full ({total_n} tasks waiting); try again later."
        elif waiting_n >= self.max_per_key:
            message = f"This API key has {waiting_n} tasks waiting, the most allowed; try again later."
        else:
            return
        raise ApiError(ErrorCode.QUEUE_FULL, message, retry_after=QUEUE_FULL_RETRY_AFTER_S)

    async def put(self, task_id: str, owner: str | None, model: str) -> None:
        async with self._reaching():
            await self._put(
                keys=[self._stream(model), self._entries, self._counts], args=[task_id, owner or _OPEN, model, GROUP]
            )

    async def discard(self, task_id: str, owner: str | None) -> None:
        async with self._reaching():
            await self._remove(keys=[self._entries, self._counts], args=[task_id, GROUP, self._streams_prefix, ""])

    # -- taking work -------------------------------------------------------------------------

    async def get(self) -> QueuedTask | None:
        while not self._closed:
            if self._ready:
                return self._ready.popleft()
            try:
                if not self._groups_made:
                    await self._make_groups()
                if time.monotonic() >= self._takeover_due:
                    self._takeover_due = time.monotonic() + self.heartbeat_s
                    self._ready.extend(await self._take_over())
                    if self._ready:
                        continue
                self._ready.extend(await self._read())
            except ResponseError as exc:
                self._groups_made = False  # NOGROUP: the streams were deleted (a flushed Redis)
                if "NOGROUP" not in str(exc):
                    log.error("task queue: %s; trying again in %.1f s", exc, self._retry_after_s)
                    await asyncio.sleep(self._retry_after_s)
            except _UNREACHABLE as exc:
                log.warning("task queue: Redis unreachable (%s); trying again in %.1f s", exc, self._retry_after_s)
                await asyncio.sleep(self._retry_after_s)
        return None

    async def _read(self) -> list[QueuedTask]:
        if not self.models:
            await asyncio.sleep(self.block_s)
            return []
        reply: _ReadReply = await self._reader.xreadgroup(  # type: ignore[assignment]
            GROUP,
            self.replica,
            {self._stream(model): ">" for model in self.models},
            count=1,
            block=max(int(self.block_s * 1000), 1),
        )
        items = [
            self._hold(stream, entry_id, fields, taken_over=False)
            for stream, entries in reply or []
            for entry_id, fields in entries
        ]
        if self._closed:  # read while closing: nobody here will run them
            for item in items:
                await self.release(item)
            return []
        return items

    async def _take_over(self) -> list[QueuedTask]:
        """At most one entry of each stream whose holder's lease expired."""
        taken: list[QueuedTask] = []
        lease_ms = int(self.lease_s * 1000)
        for model in self.models:
            stream = self._stream(model)
            reply = await self._redis.xautoclaim(
                stream, GROUP, self.replica, lease_ms, start_id=self._takeover_from.get(stream, "0-0"), count=1
            )
            self._takeover_from[stream] = reply[0]
            for entry_id, fields in reply[1]:
                if fields is None:
                    continue  # deleted meanwhile (a cancel); XAUTOCLAIM dropped it
                item = self._hold(stream, entry_id, fields, taken_over=True)
                log.warning("task %s: its runner's lease expired; taken over", item.task_id)
                taken.append(item)
        return taken

    def _hold(self, stream: str, entry_id: str, fields: dict[str, str], *, taken_over: bool) -> QueuedTask:
        owner = fields.get("owner", _OPEN)
        item = QueuedTask(
            task_id=fields["task_id"],
            owner=owner or None,
            model=stream.removeprefix(self._streams_prefix),
            taken_over=taken_over,
            ref=entry_id,
        )
        self._held[item.task_id] = item
        return item

    # -- ending ------------------------------------------------------------------------------

    async def done(self, item: QueuedTask) -> None:
        """Ack: the entry leaves the queue (unless another replica took it over meanwhile).
        When Redis cannot be reached the entry is let go unacked: its lease expires, and the
        replica that takes it over finds the task ended and acks it."""
        self._held.pop(item.task_id, None)
        try:
            await self._remove(
                keys=[self._entries, self._counts], args=[item.task_id, GROUP, self._streams_prefix, self.replica]
            )
        except (*_UNREACHABLE, ResponseError) as exc:
            log.warning("task %s: queue entry not acked (%s); its lease will expire", item.task_id, exc)

    async def release(self, item: QueuedTask) -> None:
        self._held.pop(item.task_id, None)
        try:
            await self._release(keys=[self._entries], args=[item.task_id, GROUP, self._streams_prefix, self.replica])
        except (*_UNREACHABLE, ResponseError) as exc:
            log.warning("task %s: queue entry not given back (%s); its lease will expire", item.task_id, exc)

    # -- leases ------------------------------------------------------------------------------

    async def _renew_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self.renew()
            except (*_UNREACHABLE, ResponseError) as exc:
                log.warning("task queue: leases not renewed (%s)", exc)

    async def renew(self) -> None:
        """Reset the lease of every entry this replica holds; entries lost to another replica
        (this one stalled past its lease) are dropped and reported through ``on_lost``."""
        held = list(self._held.values())
        if not held:
            return
        args = [GROUP, self.replica, self._streams_prefix]
        for item in held:
            args += [item.model, item.ref]
        lost = cast("list[int]", await self._renew(args=args))
        for index in lost:
            item = held[index]
            if self._held.get(item.task_id) is item:
                del self._held[item.task_id]
                log.warning("task %s: its lease was lost to another replica", item.task_id)
                if self.on_lost is not None:
                    self.on_lost(item.task_id)

    # -- for tests and metrics ---------------------------------------------------------------

    async def counts(self) -> dict[str, int]:
        """The queue's counts: ``total`` and ``key:<owner>``."""
        async with self._reaching():
            counts = cast("dict[str, str]", await self._redis.hgetall(self._counts))
        return {field: int(value) for field, value in counts.items()}
