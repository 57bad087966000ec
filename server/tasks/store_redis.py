"""The task store in Redis, shared by every replica of the server (settings' ``store_url``).

The same contract as ``SqliteTaskStore`` (server/tasks/store.py): status moves one way, every
transition is one Lua script that checks the status it leaves (Redis runs a script alone, so a
late or repeated write reports False and never touches a finished task), and the script that
ends a task also records its webhook, as SQLite's transaction does.

Layout, under the ``omniserve:`` prefix:

- ``task:<id>``: a hash per task, its fields named as SQLite's columns (``request`` holds the
  body's bytes as they are; ``outputs`` and ``trace_context`` are JSON; a field that is None
  is absent), plus ``order``: "<submit time, 16 digits>:<creation number, 16 digits>".
- ``tasks:queued``, ``tasks:processing``, ``tasks:succeed``, ``tasks:failed``: a sorted set per
  status whose members are "<order>:<id>", all scored 0, so Redis keeps them in lexical order:
  by submit time, then creation, as SQLite orders by (submit_time_ms, rowid). Paging walks
  that order from the last member seen, so tasks leaving the set never shift a page.
- ``tasks:seq``: the creation counter behind ``order``.
- ``tasks:finished``: finished ids scored by completion time, which retention deletes from in
  small batches.
- ``tasks:outbox``: the webhook deliveries, ids scored by their next attempt time, and
  ``tasks:outbox:<id>``: a hash per delivery (url, attempts, created_ms). Taking due
  deliveries leases them in the same script (their next attempt pushed past the lease), so
  two replicas never send one at once, and one whose sender died is due again after it.

Scripts that touch many tasks build key names from the prefix, so the store needs a standalone
Redis (or one primary), not a Redis Cluster. A call that cannot reach Redis within
``timeout_s`` (one retry on a fresh connection, for the connections a restarted Redis dropped)
raises `StoreUnavailable`; for ``retry_after_s`` after that, calls fail at once without waiting
on the network, and then Redis is tried again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.keystore import StoreUnavailable
from server.keystore_redis import PREFIX
from server.tasks.models import OutputFile, Task, TaskStatus, TaskType, now_ms
from server.tasks.store import PendingWebhook, TaskStore

T = TypeVar("T")

_STATUS_SETS = {
    TaskStatus.QUEUED: "tasks:queued",
    TaskStatus.PROCESSING: "tasks:processing",
    TaskStatus.SUCCEED: "tasks:succeed",
    TaskStatus.FAILED: "tasks:failed",
}
_ORDER_DIGITS = 16

# Every script on one task gets the same KEYS: the four status sets (in TaskStatus order), the
# finished set, the outbox, the creation counter, then the task's hash and its delivery's.
# ARGV[1] is the task id.
_STATUSES = "local QUEUED, PROCESSING, SUCCEED, FAILED = {}\n".format(
    ", ".join(f"'{status.value}'" for status in _STATUS_SETS)
)
_PRELUDE = (
    _STATUSES
    + """
local FINISHED_SET, OUTBOX, SEQ, TASK, DELIVERY = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local function set_of(status)
    if status == QUEUED then return KEYS[1] end
    if status == PROCESSING then return KEYS[2] end
    if status == SUCCEED then return KEYS[3] end
    return KEYS[4]
end
local function member()
    return redis.call('HGET', TASK, 'order') .. ':' .. ARGV[1]
end
local function move(from, to)
    local m = member()
    redis.call('ZREM', set_of(from), m)
    redis.call('ZADD', set_of(to), 0, m)
end
local function unfinished(status)
    return status == QUEUED or status == PROCESSING
end
-- A finished task's webhook, when it has a URL (replacing one still pending, as SQLite does).
local function enqueue_webhook(now)
    local url = redis.call('HGET', TASK, 'webhook_url')
    if url and url ~= '' then
        redis.call('ZADD', OUTBOX, now, ARGV[1])
        redis.call('HSET', DELIVERY, 'url', url, 'attempts', 0, 'created_ms', now)
    end
end
local function finished(now)
    redis.call('ZADD', FINISHED_SET, now, ARGV[1])
    enqueue_webhook(now)
end
"""
)

# ARGV: the id, the time, the submit time (padded), then the task's fields as name, value
# pairs. 0 when the id exists.
_CREATE = """
if redis.call('EXISTS', TASK) == 1 then
    return 0
end
local seq = tostring(redis.call('INCR', SEQ))
local order = ARGV[3] .. ':' .. string.rep('0', {digits} - #seq) .. seq
redis.call('HSET', TASK, 'order', order, unpack(ARGV, 4))
local status = redis.call('HGET', TASK, 'status')
redis.call('ZADD', set_of(status), 0, order .. ':' .. ARGV[1])
if not unfinished(status) then
    -- Created finished (webhook test mode). Without a completion time it is kept, as in SQLite.
    local done = redis.call('HGET', TASK, 'complete_time_ms')
    if done then
        redis.call('ZADD', FINISHED_SET, done, ARGV[1])
    end
    enqueue_webhook(ARGV[2])
end
return 1
""".replace("{digits}", str(_ORDER_DIGITS))

_CLAIM = """
if redis.call('HGET', TASK, 'status') ~= QUEUED then
    return 0
end
redis.call('HINCRBY', TASK, 'attempts', 1)
return 1
"""

_RELEASE = """
if redis.call('HGET', TASK, 'status') == QUEUED and tonumber(redis.call('HGET', TASK, 'attempts')) > 0 then
    redis.call('HINCRBY', TASK, 'attempts', -1)
end
return 1
"""

_REQUEUE = """
if redis.call('HGET', TASK, 'status') ~= PROCESSING then
    return 0
end
redis.call('HSET', TASK, 'status', QUEUED, 'progress_percent', 0, 'eta', 0)
redis.call('HDEL', TASK, 'execute_time_ms')
move(PROCESSING, QUEUED)
return 1
"""

# ARGV: the id, the start time.
_MARK_PROCESSING = """
if redis.call('HGET', TASK, 'status') ~= QUEUED then
    return 0
end
redis.call('HSET', TASK, 'status', PROCESSING, 'execute_time_ms', ARGV[2])
move(QUEUED, PROCESSING)
return 1
"""

# ARGV: the id, the percent, the eta.
_UPDATE_PROGRESS = """
if redis.call('HGET', TASK, 'status') ~= PROCESSING then
    return 0
end
redis.call('HSET', TASK, 'progress_percent', ARGV[2], 'eta', ARGV[3])
return 1
"""

# ARGV: the id, the time, the seed ('' for none), the outputs (JSON).
_FINISH = """
local status = redis.call('HGET', TASK, 'status')
if not unfinished(status) then
    return 0
end
redis.call('HSET', TASK, 'status', SUCCEED, 'progress_percent', 100, 'eta', 0, 'reason', '')
redis.call('HSET', TASK, 'complete_time_ms', ARGV[2], 'outputs', ARGV[4])
if ARGV[3] == '' then
    redis.call('HDEL', TASK, 'seed')
else
    redis.call('HSET', TASK, 'seed', ARGV[3])
end
move(status, SUCCEED)
finished(ARGV[2])
return 1
"""

# ARGV: the id, the time, the reason, the status it must be in ('' for either unfinished one),
# the claims it must have at least ('' for any).
_FAIL = """
local status = redis.call('HGET', TASK, 'status')
if not unfinished(status) or (ARGV[4] ~= '' and status ~= ARGV[4]) then
    return 0
end
if ARGV[5] ~= '' and tonumber(redis.call('HGET', TASK, 'attempts')) < tonumber(ARGV[5]) then
    return 0
end
redis.call('HSET', TASK, 'status', FAILED, 'reason', ARGV[3], 'eta', 0, 'complete_time_ms', ARGV[2])
move(status, FAILED)
finished(ARGV[2])
return 1
"""

# KEYS: the four status sets, the finished set, the outbox. ARGV: the cutoff, the most to
# delete, the key names' prefix. How many were deleted.
_DELETE_FINISHED = (
    _STATUSES
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local sets = {[QUEUED] = KEYS[1], [PROCESSING] = KEYS[2], [SUCCEED] = KEYS[3], [FAILED] = KEYS[4]}
for _, id in ipairs(ids) do
    local task = ARGV[3] .. 'task:' .. id
    local fields = redis.call('HMGET', task, 'status', 'order')
    if fields[1] then
        redis.call('ZREM', sets[fields[1]], fields[2] .. ':' .. id)
    end
    redis.call('DEL', task, ARGV[3] .. 'tasks:outbox:' .. id)
    redis.call('ZREM', KEYS[6], id)
    redis.call('ZREM', KEYS[5], id)
end
return #ids
"""
)

# KEYS: the outbox. ARGV: the time, the most to take, the lease's end, the key names' prefix.
# {id, url, attempts, next attempt} per delivery taken.
_DUE_WEBHOOKS = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local taken = {}
for i = 1, #due, 2 do
    local id = due[i]
    local delivery = redis.call('HMGET', ARGV[4] .. 'tasks:outbox:' .. id, 'url', 'attempts')
    if delivery[1] then
        redis.call('ZADD', KEYS[1], 'XX', ARGV[3], id)
        table.insert(taken, {id, delivery[1], delivery[2], due[i + 1]})
    else
        redis.call('ZREM', KEYS[1], id)
    end
end
return taken
"""

# KEYS: the outbox, the delivery. ARGV: the id, the attempts, the next attempt's time.
_WEBHOOK_RETRY = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], 'attempts', ARGV[2])
return 1
"""


_encode = msgspec.json.Encoder().encode
_decode_outputs = msgspec.json.Decoder(list[OutputFile]).decode
_decode_trace = msgspec.json.Decoder(dict[str, str]).decode


def _order_prefix(submit_time_ms: int) -> str:
    return str(max(submit_time_ms, 0)).zfill(_ORDER_DIGITS)


def _id_of(member: bytes) -> str:
    """The task id in a status set's member "<submit>:<seq>:<id>"."""
    return member.split(b":", 2)[2].decode()


def _fields(task: Task) -> list[str | bytes | int]:
    """The task as hash field, value pairs; a None is left out."""
    values: dict[str, str | bytes | int | None] = {
        "task_id": task.task_id,
        "task_type": task.task_type.value,
        "status": task.status.value,
        "model": task.model,
        "owner_key_id": task.owner_key_id,
        "request": task.request,
        "progress_percent": task.progress_percent,
        "eta": task.eta,
        "reason": task.reason,
        "seed": task.seed,
        "submit_time_ms": task.submit_time_ms,
        "execute_time_ms": task.execute_time_ms,
        "complete_time_ms": task.complete_time_ms,
        "webhook_url": task.webhook_url,
        "url_ttl_s": task.url_ttl_s,
        "attempts": task.attempts,
        "outputs": _encode(task.outputs),
        "trace_context": _encode(task.trace_context),
    }
    return [item for name, value in values.items() if value is not None for item in (name, value)]


def _task(fields: dict[bytes, bytes]) -> Task:
    def text(name: bytes) -> str | None:
        value = fields.get(name)
        return None if value is None else value.decode()

    def number(name: bytes) -> int | None:
        value = fields.get(name)
        return None if value is None else int(value)

    return Task(
        task_id=fields[b"task_id"].decode(),
        task_type=TaskType(fields[b"task_type"].decode()),
        status=TaskStatus(fields[b"status"].decode()),
        model=fields[b"model"].decode(),
        owner_key_id=text(b"owner_key_id"),
        request=fields[b"request"],
        progress_percent=int(fields[b"progress_percent"]),
        eta=int(fields[b"eta"]),
        reason=fields[b"reason"].decode(),
        seed=number(b"seed"),
        submit_time_ms=int(fields[b"submit_time_ms"]),
        execute_time_ms=number(b"execute_time_ms"),
        complete_time_ms=number(b"complete_time_ms"),
        webhook_url=text(b"webhook_url"),
        url_ttl_s=int(fields[b"url_ttl_s"]),
        attempts=int(fields[b"attempts"]),
        outputs=_decode_outputs(fields[b"outputs"]),
        trace_context=_decode_trace(fields[b"trace_context"]),
    )


async def _result(reply: Awaitable[T] | T) -> T:
    """redis-py types its commands for both clients; on the asyncio one each is awaitable."""
    return await cast("Awaitable[T]", reply)


class RedisTaskStore:
    def __init__(self, url: str, *, timeout_s: float, retry_after_s: float, prefix: str = PREFIX) -> None:
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # One retry at once on a fresh connection (a restarted Redis dropped the pooled
            # ones); never redis-py's default of backing off and retrying for seconds.
            retry=Retry(NoBackoff(), 1),
            decode_responses=False,  # request bodies are bytes, kept as they are
        )
        self._prefix = prefix
        self._retry_after_s = retry_after_s
        self._down_until = float("-inf")
        self._sets = {status: prefix + name for status, name in _STATUS_SETS.items()}
        self._finished = prefix + "tasks:finished"
        self._outbox = prefix + "tasks:outbox"
        self._fixed_keys = [*self._sets.values(), self._finished, self._outbox, prefix + "tasks:seq"]
        script = self._redis.register_script
        self._create = script(_PRELUDE + _CREATE)
        self._claim = script(_PRELUDE + _CLAIM)
        self._release = script(_PRELUDE + _RELEASE)
        self._requeue = script(_PRELUDE + _REQUEUE)
        self._mark_processing = script(_PRELUDE + _MARK_PROCESSING)
        self._update_progress = script(_PRELUDE + _UPDATE_PROGRESS)
        self._finish = script(_PRELUDE + _FINISH)
        self._fail = script(_PRELUDE + _FAIL)
        self._delete_finished = script(_DELETE_FINISHED)
        self._due_webhooks = script(_DUE_WEBHOOKS)
        self._webhook_retry = script(_WEBHOOK_RETRY)

    def _task_key(self, task_id: str) -> str:
        return f"{self._prefix}task:{task_id}"

    def _delivery_key(self, task_id: str) -> str:
        return f"{self._prefix}tasks:outbox:{task_id}"

    def _keys(self, task_id: str) -> list[str]:
        return [*self._fixed_keys, self._task_key(task_id), self._delivery_key(task_id)]

    @contextlib.asynccontextmanager
    async def _reaching(self) -> AsyncIterator[aioredis.Redis]:
        """Redis, or StoreUnavailable while it is down (at once during the retry period)."""
        wait = self._down_until - time.monotonic()
        if wait > 0:
            raise StoreUnavailable(wait, what="task store")
        try:
            yield self._redis
        # InvalidResponse: something that is not Redis answered (a proxy, a wrong port).
        except (RedisConnectionError, RedisTimeoutError, InvalidResponse) as exc:
            self._down_until = time.monotonic() + self._retry_after_s
            raise StoreUnavailable(self._retry_after_s, what="task store") from exc

    async def _run(self, script: Any, task_id: str, *args: str | bytes | int) -> bool:
        """One script on one task; whether it changed the task."""
        async with self._reaching():
            return bool(await script(keys=self._keys(task_id), args=[task_id, *args]))

    async def close(self) -> None:
        await self._redis.aclose()

    async def create(self, task: Task) -> None:
        args = [task.task_id, now_ms(), _order_prefix(task.submit_time_ms), *_fields(task)]
        async with self._reaching():
            created = await self._create(keys=self._keys(task.task_id), args=args)
        if not created:
            raise ValueError(f"task {task.task_id} already exists")

    async def get(self, task_id: str) -> Task | None:
        async with self._reaching() as db:
            fields = cast("dict[bytes, bytes]", await db.hgetall(self._task_key(task_id)))
        return _task(fields) if fields else None

    async def status_of(self, task_id: str) -> TaskStatus | None:
        async with self._reaching() as db:
            status = cast("bytes | None", await db.hget(self._task_key(task_id), "status"))
        return None if status is None else TaskStatus(status.decode())

    async def claim(self, task_id: str) -> bool:
        return await self._run(self._claim, task_id)

    async def release(self, task_id: str) -> None:
        await self._run(self._release, task_id)

    async def requeue(self, task_id: str) -> bool:
        return await self._run(self._requeue, task_id)

    async def mark_processing(self, task_id: str, execute_time_ms: int) -> bool:
        return await self._run(self._mark_processing, task_id, execute_time_ms)

    async def update_progress(self, task_id: str, percent: int, eta: int) -> bool:
        return await self._run(self._update_progress, task_id, min(max(percent, 0), 100), max(eta, 0))

    async def finish(self, task_id: str, outputs: list[OutputFile], seed: int | None) -> bool:
        return await self._run(self._finish, task_id, now_ms(), "" if seed is None else seed, _encode(outputs))

    async def fail(self, task_id: str, reason: str) -> bool:
        return await self._run(self._fail, task_id, now_ms(), reason, "", "")

    async def _members(self, status: TaskStatus, start: int, stop: int) -> list[bytes]:
        async with self._reaching() as db:
            return cast("list[bytes]", await _result(db.zrange(self._sets[status], start, stop)))

    async def _tasks(self, ids: list[str]) -> list[Task]:
        """The tasks of ``ids`` in that order, leaving out any deleted meanwhile."""
        async with self._reaching() as db:
            pipe = db.pipeline(transaction=False)
            for task_id in ids:
                pipe.hgetall(self._task_key(task_id))
            rows = await pipe.execute()
        return [_task(row) for row in rows if row]

    async def list_by_status(self, status: TaskStatus, limit: int) -> list[Task]:
        if limit <= 0:
            return []
        return await self._tasks([_id_of(member) for member in await self._members(status, 0, limit - 1)])

    async def next_queued(self, limit: int) -> list[Task]:
        return await self.list_by_status(TaskStatus.QUEUED, limit)

    async def ids_with_status(self, status: TaskStatus) -> list[str]:
        return [_id_of(member) for member in await self._members(status, 0, -1)]

    async def _queued_pages(self, page: int) -> AsyncIterator[list[tuple[str, dict[str, bytes | None]]]]:
        """The QUEUED tasks, oldest first, a page at a time: each as its id and its owner
        and claims (tasks deleted meanwhile left out)."""
        after = b"-"
        while True:
            async with self._reaching() as db:
                members = cast(
                    "list[bytes]",
                    await _result(db.zrangebylex(self._sets[TaskStatus.QUEUED], after, b"+", start=0, num=page)),
                )
                pipe = db.pipeline(transaction=False)
                for member in members:
                    pipe.hmget(self._task_key(_id_of(member)), ["status", "owner_key_id", "attempts"])
                rows = await pipe.execute()
            yield [
                (_id_of(member), {"owner_key_id": row[1], "attempts": row[2]})
                for member, row in zip(members, rows, strict=True)
                if row[0] is not None
            ]
            if len(members) < page:
                return
            after = b"(" + members[-1]

    async def queued_ids(self, page: int = 1000) -> AsyncIterator[tuple[str, str | None]]:
        async for tasks in self._queued_pages(page):
            for task_id, fields in tasks:
                owner = fields["owner_key_id"]
                yield task_id, None if owner is None else owner.decode()

    async def recover_interrupted(
        self, reason: str, *, max_claims: int | None = None, held_reason: str = ""
    ) -> list[str]:
        """As SQLite's: fail every PROCESSING task, and with ``max_claims`` every QUEUED one
        claimed that often. Each failure is its own script, which checks the status (and the
        claims) again, so a task another replica ends meanwhile is left as it ended."""
        now = now_ms()
        failed = [
            task_id
            for task_id in await self.ids_with_status(TaskStatus.PROCESSING)
            if await self._run(self._fail, task_id, now, reason, TaskStatus.PROCESSING.value, "")
        ]
        if max_claims is not None:
            held = [
                task_id
                async for tasks in self._queued_pages(1000)
                for task_id, fields in tasks
                if int(fields["attempts"] or 0) >= max_claims
            ]
            for task_id in held:
                if await self._run(self._fail, task_id, now, held_reason, TaskStatus.QUEUED.value, max_claims):
                    failed.append(task_id)
        return failed

    async def delete_finished_before(self, cutoff_ms: int, limit: int = 500) -> int:
        keys = [*self._sets.values(), self._finished, self._outbox]
        async with self._reaching():
            return int(await self._delete_finished(keys=keys, args=[cutoff_ms, limit, self._prefix]))

    async def status_counts(self) -> dict[TaskStatus, int]:
        async with self._reaching() as db:
            pipe = db.pipeline(transaction=False)
            for key in self._sets.values():
                pipe.zcard(key)
            counts = await pipe.execute()
        return {status: int(count) for status, count in zip(self._sets, counts, strict=True) if count}

    # -- the webhook outbox ------------------------------------------------------------------

    async def due_webhooks(self, now_ms: int, limit: int, lease_ms: int) -> list[PendingWebhook]:
        if limit <= 0:
            return []
        async with self._reaching():
            taken = await self._due_webhooks(keys=[self._outbox], args=[now_ms, limit, now_ms + lease_ms, self._prefix])
        return [
            PendingWebhook(
                task_id=task_id.decode(), url=url.decode(), attempts=int(attempts), next_attempt_ms=int(float(due))
            )
            for task_id, url, attempts, due in taken
        ]

    async def next_webhook_due(self) -> int | None:
        async with self._reaching() as db:
            first = cast("list[tuple[bytes, float]]", await _result(db.zrange(self._outbox, 0, 0, withscores=True)))
        return int(first[0][1]) if first else None

    async def webhook_done(self, task_id: str) -> None:
        async with self._reaching() as db:
            pipe = db.pipeline(transaction=True)
            pipe.zrem(self._outbox, task_id)
            pipe.delete(self._delivery_key(task_id))
            await pipe.execute()

    async def webhook_retry(self, task_id: str, attempts: int, next_attempt_ms: int) -> None:
        async with self._reaching():
            await self._webhook_retry(
                keys=[self._outbox, self._delivery_key(task_id)], args=[task_id, attempts, next_attempt_ms]
            )

    async def pending_webhooks(self) -> int:
        async with self._reaching() as db:
            return int(await db.zcard(self._outbox))


if TYPE_CHECKING:
    # mypy proves the implementation satisfies the protocol; never runs.
    _conforms: TaskStore = RedisTaskStore("redis://", timeout_s=1.0, retry_after_s=1.0)
