"""The batch store in Redis, shared by every replica (settings' ``store_url``), and the leases
that let exactly one replica run a batch at a time.

Layout, under the ``omniserve:`` prefix (server/keystore_redis.py PREFIX):

- ``batches:seq``: the counter that orders files and batches (newest first in listings).
- ``batchfile:<id>``: a hash per file: owner, seq, record (the FileObject, JSON).
- ``batchfiles:<owner>``: the owner's file ids, scored by seq.
- ``batch:<id>``: a hash per batch: owner, seq, status, record (the Batch, JSON).
- ``batches:<owner>``: the owner's batch ids, scored by seq; ``batches:active``: the ids of the
  batches that have not ended, scored by seq.
- ``batch:<id>:lines``: line number -> its output, written once (HSETNX): what makes a line
  done. ``batch:<id>:ok`` and ``batch:<id>:failed``: the recorded line numbers, scored by
  themselves, for the counts and for reading outputs back in input order.
- ``batch:<id>:attempts``: line number -> how many runs of it started (charge ids, runner.py).
- ``batch:<id>:lease``: the token of the replica running the batch, expiring after lease_s.

A change of a batch (``update``) reads the record, applies the caller's change and writes it
back in a MULTI under WATCH, so two replicas' changes (a cancel here, the end of the batch
there) never overwrite each other: the loser reads again. Recording lines is a Lua script.

Calls block (the sync client, as the key store): callers run them on the STORAGE pool. A call
that cannot reach Redis within ``timeout_s`` raises `StoreUnavailable`; for ``retry_after_s``
after that, calls fail at once, and then Redis is tried again (as RedisKeyStore does).
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import cast

import msgspec
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from schemas.openai.batches import Batch, BatchRequestCounts, FileObject
from server.batches.store import ACTIVE_STATUSES, LineResult
from server.keystore import StoreUnavailable
from server.keystore_redis import PREFIX

# KEYS: the owner's files, the file, the counter. ARGV: max files, id, owner, record. 0 when full.
_ADD_FILE = """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
    return 0
end
local seq = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[2], 'owner', ARGV[3], 'record', ARGV[4], 'seq', seq)
redis.call('ZADD', KEYS[1], seq, ARGV[2])
return 1
"""

# KEYS: the file, the owner's files. ARGV: the owner, the id. 0 when not the owner's.
_DELETE_FILE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
    return 0
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""

# KEYS: the lines, the ok set, the failed set. ARGV: (line, '1' ok or '0', output) triples.
# The number of lines recorded now (a line already recorded keeps its first result).
_RECORD = """
local added = 0
for i = 1, #ARGV, 3 do
    if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 2]) == 1 then
        if ARGV[i + 1] == '1' then
            redis.call('ZADD', KEYS[2], ARGV[i], ARGV[i])
        else
            redis.call('ZADD', KEYS[3], ARGV[i], ARGV[i])
        end
        added = added + 1
    end
end
return added
"""

# KEYS: the lease. ARGV: the token, the lease in ms. SET NX PX, and also 1 for the holder itself
# (a batch this process paused while the store was away is taken up again at once).
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
if held then
    return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: the lease, the batch. ARGV: the token, the lease in ms. The batch's status while the
# lease is this token's (now renewed), false when it is not.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return false
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('HGET', KEYS[2], 'status') or ''
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

# Lines recorded per script call: a batch of 50,000 expired lines is not one huge command.
_RECORD_CHUNK = 1000


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisBatchStore:
    def __init__(
        self,
        url: str,
        *,
        replica: str,
        timeout_s: float,
        retry_after_s: float,
        lease_s: float,
        prefix: str = PREFIX,
    ) -> None:
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),  # one retry on a fresh connection, never a backoff
        )
        self._prefix = prefix
        # This process's leases: a replica restarted with the same id waits for its old
        # leases to expire (or finds them released by a clean stop), never renews them.
        self._token = f"{replica}:{uuid.uuid4().hex}"
        self._lease_ms = int(lease_s * 1000)
        self._retry_after_s = retry_after_s
        self._down_until = float("-inf")
        self._lock = threading.Lock()
        self._add_file = self._redis.register_script(_ADD_FILE)
        self._delete_file = self._redis.register_script(_DELETE_FILE)
        self._record = self._redis.register_script(_RECORD)
        self._claim = self._redis.register_script(_CLAIM)
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)
        self._file_decoder = msgspec.json.Decoder(FileObject)
        self._batch_decoder = msgspec.json.Decoder(Batch)

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[redis.Redis]:
        """Redis, or StoreUnavailable while it is down (at once during the retry period)."""
        wait = self._down_until - time.monotonic()
        if wait > 0:
            raise StoreUnavailable(wait)
        try:
            yield self._redis
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.InvalidResponse) as exc:
            with self._lock:
                self._down_until = time.monotonic() + self._retry_after_s
            raise StoreUnavailable(self._retry_after_s) from exc

    def close(self) -> None:
        self._redis.close()

    # -- key names ---------------------------------------------------------------------------

    def _file_key(self, file_id: str) -> str:
        return f"{self._prefix}batchfile:{file_id}"

    def _owner_files(self, owner: str) -> str:
        return f"{self._prefix}batchfiles:{owner}"

    def _batch_key(self, batch_id: str, part: str = "") -> str:
        return f"{self._prefix}batch:{batch_id}{':' + part if part else ''}"

    def _owner_batches(self, owner: str) -> str:
        return f"{self._prefix}batches:{owner}"

    @property
    def _active(self) -> str:
        return f"{self._prefix}batches:active"

    @property
    def _seq(self) -> str:
        return f"{self._prefix}batches:seq"

    # -- files -------------------------------------------------------------------------------

    def add_file(self, owner: str, file: FileObject, *, max_files: int) -> bool:
        keys = [self._owner_files(owner), self._file_key(file.id), self._seq]
        with self._reaching():
            return bool(self._add_file(keys=keys, args=[max_files, file.id, owner, msgspec.json.encode(file)]))

    def file(self, owner: str, file_id: str) -> FileObject | None:
        with self._reaching() as db:
            found_owner, record = cast("list[bytes | None]", db.hmget(self._file_key(file_id), "owner", "record"))
        if record is None or found_owner is None or _text(found_owner) != owner:
            return None
        return self._file_decoder.decode(record)

    def files(self, owner: str, *, purpose: str | None, after: str | None, limit: int) -> tuple[list[FileObject], bool]:
        """The owner's files, newest first, after the file ``after``; and whether more follow."""
        ids = self._newest(self._owner_files(owner), after, limit + 1 if purpose is None else None)
        with self._reaching() as db:
            pipe = db.pipeline(transaction=False)
            for file_id in ids:
                pipe.hget(self._file_key(file_id), "record")
            records = cast("list[bytes | None]", pipe.execute())
        found = [self._file_decoder.decode(record) for record in records if record is not None]
        if purpose is not None:
            found = [file for file in found if file.purpose == purpose][: limit + 1]
        return found[:limit], len(found) > limit

    def delete_file(self, owner: str, file_id: str) -> bool:
        with self._reaching():
            return bool(
                self._delete_file(keys=[self._file_key(file_id), self._owner_files(owner)], args=[owner, file_id])
            )

    def file_in_use(self, owner: str, file_id: str) -> str | None:
        """The id of an unfinished batch of ``owner`` that reads ``file_id``, if any."""
        with self._reaching() as db:
            ids = [_text(found) for found in cast("list[bytes]", db.zrange(self._active, 0, -1))]
            pipe = db.pipeline(transaction=False)
            for batch_id in ids:
                pipe.hmget(self._batch_key(batch_id), "owner", "record")
            rows = cast("list[list[bytes | None]]", pipe.execute())
        for found_owner, record in rows:
            if found_owner is None or record is None or _text(found_owner) != owner:
                continue
            batch = self._batch_decoder.decode(record)
            if batch.status in ACTIVE_STATUSES and batch.input_file_id == file_id:
                return batch.id
        return None

    # -- batches -----------------------------------------------------------------------------

    def add_batch(self, owner: str, batch: Batch) -> None:
        with self._reaching() as db:
            seq = int(cast("int", db.incr(self._seq)))
            pipe = db.pipeline(transaction=True)
            pipe.hset(
                self._batch_key(batch.id),
                mapping={"owner": owner, "seq": seq, "status": batch.status, "record": msgspec.json.encode(batch)},
            )
            pipe.zadd(self._owner_batches(owner), {batch.id: seq})
            if batch.status in ACTIVE_STATUSES:
                pipe.zadd(self._active, {batch.id: seq})
            pipe.execute()

    def batch(self, owner: str | None, batch_id: str) -> Batch | None:
        """The batch with its counts; ``owner`` None: whoever owns it (the runner)."""
        with self._reaching() as db:
            pipe = db.pipeline(transaction=True)
            pipe.hmget(self._batch_key(batch_id), "owner", "record")
            pipe.zcard(self._batch_key(batch_id, "ok"))
            pipe.zcard(self._batch_key(batch_id, "failed"))
            (found_owner, record), completed, failed = pipe.execute()
        if record is None or (owner is not None and _text(found_owner) != owner):
            return None
        return self._counted(self._batch_decoder.decode(record), completed, failed)

    def owner_of(self, batch_id: str) -> str | None:
        with self._reaching() as db:
            found = cast("bytes | None", db.hget(self._batch_key(batch_id), "owner"))
        return None if found is None else _text(found)

    def batches(self, owner: str, *, after: str | None, limit: int) -> tuple[list[Batch], bool]:
        ids = self._newest(self._owner_batches(owner), after, limit + 1)
        with self._reaching() as db:
            pipe = db.pipeline(transaction=False)
            for batch_id in ids:
                pipe.hget(self._batch_key(batch_id), "record")
                pipe.zcard(self._batch_key(batch_id, "ok"))
                pipe.zcard(self._batch_key(batch_id, "failed"))
            replies = pipe.execute()
        found = [
            self._counted(self._batch_decoder.decode(record), completed, failed)
            for record, completed, failed in zip(replies[::3], replies[1::3], replies[2::3], strict=True)
            if record is not None
        ]
        return found[:limit], len(found) > limit

    def active_batch_ids(self) -> list[str]:
        with self._reaching() as db:
            return [_text(found) for found in cast("list[bytes]", db.zrange(self._active, 0, -1))]

    def update(
        self,
        batch_id: str,
        leaving: Iterable[str],
        change: Callable[[Batch], None],
        *,
        results: Iterable[LineResult] = (),
        files: Iterable[tuple[str, FileObject]] = (),
    ) -> Batch | None:
        """Apply ``change`` to the batch if its status is one of ``leaving``, recording
        ``results`` and ``files`` in the same transaction; the batch as it now is, or None
        when its status did not allow the change."""
        leaving = tuple(leaving)
        results, files = list(results), list(files)
        key = self._batch_key(batch_id)
        with self._reaching() as db:
            while True:
                with db.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(key)
                        record = cast("bytes | None", pipe.hget(key, "record"))
                        if record is None:
                            return None
                        batch = self._batch_decoder.decode(record)
                        if batch.status not in leaving:
                            return None
                        change(batch)
                        seqs = [int(cast("int", pipe.incr(self._seq))) for _ in files]
                        pipe.multi()
                        self._queue_records(pipe, batch_id, results)
                        for (owner, file), seq in zip(files, seqs, strict=True):
                            pipe.hset(
                                self._file_key(file.id),
                                mapping={"owner": owner, "seq": seq, "record": msgspec.json.encode(file)},
                            )
                            pipe.zadd(self._owner_files(owner), {file.id: seq})
                        pipe.hset(key, mapping={"status": batch.status, "record": msgspec.json.encode(batch)})
                        if batch.status not in ACTIVE_STATUSES:
                            pipe.zrem(self._active, batch_id)
                        pipe.execute()
                    except redis.WatchError:
                        continue  # changed by another replica meanwhile: read it again
                return batch

    # -- lines -------------------------------------------------------------------------------

    def record_line(self, batch_id: str, result: LineResult) -> bool:
        """Record one line's result; False when it already had one (it is never replaced)."""
        with self._reaching():
            return bool(self._record(keys=self._line_keys(batch_id), args=self._line_args([result])))

    def recorded_lines(self, batch_id: str) -> set[int]:
        with self._reaching() as db:
            return {int(line) for line in cast("list[bytes]", db.hkeys(self._batch_key(batch_id, "lines")))}

    def record_lines(self, batch_id: str, results: Iterable[LineResult]) -> None:
        """Record several lines at once (those never run, for an expired batch)."""
        with self._reaching() as db:
            pipe = db.pipeline(transaction=True)
            self._queue_records(pipe, batch_id, list(results))
            pipe.execute()

    def outputs(self, batch_id: str, *, ok: bool, chunk: int = 1000) -> Iterator[bytes]:
        """The recorded outputs that succeeded (``ok``) or failed, in input order, a chunk at
        a time (a recorded line never changes, so the chunks need no transaction)."""
        numbers = self._batch_key(batch_id, "ok" if ok else "failed")
        after = "-inf"
        while True:
            with self._reaching() as db:
                lines = [
                    _text(line) for line in cast("list[bytes]", db.zrangebyscore(numbers, after, "+inf", 0, chunk))
                ]
                outputs = cast("list[bytes]", db.hmget(self._batch_key(batch_id, "lines"), lines)) if lines else []
            yield from outputs
            if len(lines) < chunk:
                return
            after = f"({lines[-1]}"

    # -- leases ------------------------------------------------------------------------------

    def claim(self, batch_id: str) -> bool:
        """Take the batch's lease when nobody holds it (or its holder's has expired)."""
        with self._reaching():
            return bool(self._claim(keys=[self._batch_key(batch_id, "lease")], args=[self._token, self._lease_ms]))

    def renew(self, batch_id: str) -> str | None:
        """Renew the lease held here: the batch's status, or None when the lease is lost."""
        with self._reaching():
            status = self._renew(
                keys=[self._batch_key(batch_id, "lease"), self._batch_key(batch_id)], args=[self._token, self._lease_ms]
            )
        return None if status is None else _text(status)

    def release(self, batch_id: str) -> None:
        with self._reaching():
            self._release(keys=[self._batch_key(batch_id, "lease")], args=[self._token])

    def line_attempt(self, batch_id: str, line: int) -> int:
        """Count one more run of the line: its number, from 1."""
        with self._reaching() as db:
            return int(cast("int", db.hincrby(self._batch_key(batch_id, "attempts"), str(line), 1)))

    # -- helpers -----------------------------------------------------------------------------

    def _newest(self, ordered: str, after: str | None, limit: int | None) -> list[str]:
        """Ids of a seq-scored set, newest first, older than ``after`` (nothing when ``after``
        is not in the set, as the SQLite store answers)."""
        with self._reaching() as db:
            top: float | str = "+inf"
            if after is not None:
                score = db.zscore(ordered, after)
                if score is None:
                    return []
                top = f"({int(score)}"
            if limit is None:
                found = db.zrevrangebyscore(ordered, top, "-inf")
            else:
                found = db.zrevrangebyscore(ordered, top, "-inf", 0, limit)
        return [_text(item) for item in cast("list[bytes]", found)]

    def _line_keys(self, batch_id: str) -> list[str]:
        return [self._batch_key(batch_id, part) for part in ("lines", "ok", "failed")]

    @staticmethod
    def _line_args(results: list[LineResult]) -> list[bytes | int | str]:
        args: list[bytes | int | str] = []
        for result in results:
            args += [result.line, "1" if result.ok else "0", result.output]
        return args

    def _queue_records(self, pipe: redis.client.Pipeline, batch_id: str, results: list[LineResult]) -> None:
        for start in range(0, len(results), _RECORD_CHUNK):
            chunk = results[start : start + _RECORD_CHUNK]
            self._record(keys=self._line_keys(batch_id), args=self._line_args(chunk), client=pipe)

    @staticmethod
    def _counted(batch: Batch, completed: int, failed: int) -> Batch:
        batch.request_counts = BatchRequestCounts(
            total=batch.request_counts.total, completed=int(completed), failed=int(failed)
        )
        return batch
