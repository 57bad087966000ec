"""Durable task records: a ``TaskStore`` protocol and its SQLite implementation.

Status moves one way: QUEUED -> PROCESSING -> SUCCEED | FAILED (QUEUED may also finish
or fail directly: test-mode webhooks, cancelled and rejected requests never run). Every
write names the statuses it may leave, so a late or repeated write never corrupts a
finished task; it just reports False.

A task stays QUEUED while a runner holds it waiting for an engine, and becomes PROCESSING
only when its work starts (``mark_processing``): a restart queues it again instead of
failing a task that never ran. ``attempts`` counts the runners that took it (``claim``);
a clean stop gives the claim back (``release``), so a task whose claims pile up is one
that was held each time the process died.

The webhook outbox lives here too: the transaction that ends a task with a webhook URL
also records its delivery, so no crash can lose one; deliveries leave the outbox once
they are sent or given up (``server/tasks/outbox.py``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from server.sqlite_tx import immediate_transaction
from server.tasks.models import OutputFile, Task, TaskStatus, TaskType, now_ms


class PendingWebhook(msgspec.Struct, kw_only=True):
    """One delivery in the outbox: the body is rendered from the task when it is sent."""

    task_id: str
    url: str
    attempts: int
    next_attempt_ms: int


class TaskStore(Protocol):
    """Where tasks live: SQLite in the data dir (one server), or a Redis that replicas share
    (``server/tasks/store_redis.py``). Every transition names the statuses it may leave and
    reports False when the task is in none of them. A store that cannot be reached raises
    `StoreUnavailable` (server/keystore.py)."""

    async def create(self, task: Task) -> None:
        """Record a new task; one created finished (webhook test mode) queues its webhook."""
        ...

    async def get(self, task_id: str) -> Task | None: ...

    async def status_of(self, task_id: str) -> TaskStatus | None: ...

    async def claim(self, task_id: str) -> bool:
        """Count a runner taking a QUEUED task; False when it is no longer QUEUED."""
        ...

    async def release(self, task_id: str) -> None:
        """Give back a claim of a task that never started (a clean stop)."""
        ...

    async def requeue(self, task_id: str) -> bool:
        """PROCESSING -> QUEUED, its progress and start time cleared (a run that stopped and
        is to run again); False in any other status."""
        ...

    async def mark_processing(self, task_id: str, execute_time_ms: int) -> bool:
        """QUEUED -> PROCESSING; False when another runner took it or it already ended."""
        ...

    async def update_progress(self, task_id: str, percent: int, eta: int) -> bool: ...

    async def finish(self, task_id: str, outputs: list[OutputFile], seed: int | None) -> bool:
        """QUEUED | PROCESSING -> SUCCEED, its webhook queued in the same write."""
        ...

    async def fail(self, task_id: str, reason: str) -> bool:
        """QUEUED | PROCESSING -> FAILED, its webhook queued in the same write."""
        ...

    async def list_by_status(self, status: TaskStatus, limit: int) -> list[Task]:
        """The oldest ``limit`` tasks in ``status`` (by submit time, then creation order)."""
        ...

    async def next_queued(self, limit: int) -> list[Task]: ...

    async def recover_interrupted(
        self, reason: str, *, max_claims: int | None = None, held_reason: str = ""
    ) -> list[str]: ...

    def queued_ids(self, page: int = 1000) -> AsyncIterator[tuple[str, str | None]]:
        """Every QUEUED task as (task_id, owner_key_id), oldest first, a page at a time."""
        ...

    async def ids_with_status(self, status: TaskStatus) -> list[str]: ...

    async def delete_finished_before(self, cutoff_ms: int, limit: int = 500) -> int: ...

    async def status_counts(self) -> dict[TaskStatus, int]: ...

    async def close(self) -> None: ...

    # -- the webhook outbox: every finished task's delivery until it is sent or given up -----

    async def due_webhooks(self, now_ms: int, limit: int, lease_ms: int) -> list[PendingWebhook]:
        """Up to ``limit`` deliveries due at ``now_ms``, each leased in the same atomic step
        (its next attempt pushed to ``now_ms + lease_ms``): no other dispatcher takes it while
        this one sends it, and it is due again if this one dies before recording the outcome."""
        ...

    async def next_webhook_due(self) -> int | None: ...

    async def webhook_done(self, task_id: str) -> None:
        """Delivered, or given up: out of the outbox."""
        ...

    async def webhook_retry(self, task_id: str, attempts: int, next_attempt_ms: int) -> None: ...

    async def pending_webhooks(self) -> int: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    task_type TEXT NOT NULL,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    owner_key_id TEXT,
    request BLOB NOT NULL,
    progress_percent INTEGER NOT NULL,
    eta INTEGER NOT NULL,
    reason TEXT NOT NULL,
    seed INTEGER,
    submit_time_ms INTEGER NOT NULL,
    execute_time_ms INTEGER,
    complete_time_ms INTEGER,
    webhook_url TEXT,
    url_ttl_s INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    extra BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_status_submit ON tasks (status, submit_time_ms);
CREATE INDEX IF NOT EXISTS tasks_complete ON tasks (complete_time_ms);
CREATE TABLE IF NOT EXISTS webhook_outbox (
    task_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_ms INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox (next_attempt_ms);
"""

# A finished task's webhook, queued in the transaction that finished it (only when it has a URL).
_ENQUEUE_WEBHOOK = (
    "INSERT OR REPLACE INTO webhook_outbox (task_id, url, attempts, next_attempt_ms, created_ms) "
    "SELECT task_id, webhook_url, 0, ?, ? FROM tasks WHERE task_id = ? AND webhook_url IS NOT NULL "
    "AND webhook_url != ''"
)

_COLUMNS = (
    "task_id, task_type, status, model, owner_key_id, request, progress_percent, eta, reason, seed, "
    "submit_time_ms, execute_time_ms, complete_time_ms, webhook_url, url_ttl_s, attempts, extra"
)

_QUEUED = TaskStatus.QUEUED.value
_PROCESSING = TaskStatus.PROCESSING.value
_FINISHED = (TaskStatus.SUCCEED.value, TaskStatus.FAILED.value)


class _Extra(msgspec.Struct, kw_only=True):
    """The non-scalar fields, kept as one JSON column: never queried, only carried."""

    outputs: list[OutputFile] = []
    trace_context: dict[str, str] = {}


_encode_extra = msgspec.json.Encoder().encode
_decode_extra = msgspec.json.Decoder(_Extra).decode


def _row_to_task(row: tuple[Any, ...]) -> Task:
    extra = _decode_extra(row[16])
    return Task(
        task_id=row[0],
        task_type=TaskType(row[1]),
        status=TaskStatus(row[2]),
        model=row[3],
        owner_key_id=row[4],
        request=bytes(row[5]),
        progress_percent=row[6],
        eta=row[7],
        reason=row[8],
        seed=row[9],
        submit_time_ms=row[10],
        execute_time_ms=row[11],
        complete_time_ms=row[12],
        webhook_url=row[13],
        url_ttl_s=row[14],
        attempts=row[15],
        outputs=extra.outputs,
        trace_context=extra.trace_context,
    )


class SqliteTaskStore:
    """One SQLite file in WAL mode, one connection serialised by a lock.

    The SQL runs inline on the event loop, not through ``asyncio.to_thread``: measured
    here, an indexed single-row write (its own transaction, WAL, synchronous=NORMAL) takes
    ~15 us at p50 and ~45 us at p99, while a ``to_thread`` hop alone costs ~100 us. A
    thread would make every call slower to save a rare WAL checkpoint (~0.2 ms). The lock
    is a threading lock so the store stays safe if a caller does use a thread.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (the case recover_interrupted is
        # for); only a power cut can drop the last commits, and fsync per write would not
        # be inline-cheap any more.
        self._db.execute("PRAGMA synchronous=NORMAL")
        # Short: this process is the only writer, and the loop must not stall for long.
        self._db.execute("PRAGMA busy_timeout=1000")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    async def close(self) -> None:
        with self._lock:
            self._db.close()

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return immediate_transaction(self._db, self._lock)

    def _write(self, sql: str, params: tuple[Any, ...]) -> int:
        """Run one write in its own transaction; the number of rows it changed."""
        with self._transaction() as db:
            return db.execute(sql, params).rowcount

    def _select(self, sql: str, params: tuple[Any, ...]) -> list[Task]:
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [_row_to_task(row) for row in rows]

    async def create(self, task: Task) -> None:
        """Record a new task; one created finished (webhook test mode) queues its webhook."""
        with self._transaction() as db:
            self._insert(db, task)
            if task.status.finished:
                now = now_ms()
                db.execute(_ENQUEUE_WEBHOOK, (now, now, task.task_id))

    @staticmethod
    def _insert(db: sqlite3.Connection, task: Task) -> None:
        db.execute(
            f"INSERT INTO tasks ({_COLUMNS}) VALUES ({', '.join('?' * 17)})",
            (
                task.task_id,
                task.task_type.value,
                task.status.value,
                task.model,
                task.owner_key_id,
                task.request,
                task.progress_percent,
                task.eta,
                task.reason,
                task.seed,
                task.submit_time_ms,
                task.execute_time_ms,
                task.complete_time_ms,
                task.webhook_url,
                task.url_ttl_s,
                task.attempts,
                _encode_extra(_Extra(outputs=task.outputs, trace_context=task.trace_context)),
            ),
        )

    async def status_of(self, task_id: str) -> TaskStatus | None:
        task = await self.get(task_id)
        return task.status if task is not None else None

    async def get(self, task_id: str) -> Task | None:
        tasks = self._select(f"SELECT {_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,))
        return tasks[0] if tasks else None

    async def claim(self, task_id: str) -> bool:
        return (
            self._write("UPDATE tasks SET attempts = attempts + 1 WHERE task_id = ? AND status = ?", (task_id, _QUEUED))
            == 1
        )

    async def release(self, task_id: str) -> None:
        self._write(
            "UPDATE tasks SET attempts = MAX(attempts - 1, 0) WHERE task_id = ? AND status = ?", (task_id, _QUEUED)
        )

    async def requeue(self, task_id: str) -> bool:
        """PROCESSING -> QUEUED with its progress reset: the replica running it died, and
        another runs it again (``attempts`` keeps counting the runs)."""
        return (
            self._write(
                "UPDATE tasks SET status = ?, progress_percent = 0, eta = 0, execute_time_ms = NULL "
                "WHERE task_id = ? AND status = ?",
                (_QUEUED, task_id, _PROCESSING),
            )
            == 1
        )

    async def mark_processing(self, task_id: str, execute_time_ms: int) -> bool:
        """QUEUED -> PROCESSING, when the task's work starts."""
        return (
            self._write(
                "UPDATE tasks SET status = ?, execute_time_ms = ? WHERE task_id = ? AND status = ?",
                (_PROCESSING, execute_time_ms, task_id, _QUEUED),
            )
            == 1
        )

    async def update_progress(self, task_id: str, percent: int, eta: int) -> bool:
        percent = min(max(percent, 0), 100)
        return (
            self._write(
                "UPDATE tasks SET progress_percent = ?, eta = ? WHERE task_id = ? AND status = ?",
                (percent, max(eta, 0), task_id, _PROCESSING),
            )
            == 1
        )

    async def finish(self, task_id: str, outputs: list[OutputFile], seed: int | None) -> bool:
        # Read-modify-write of the JSON column in one transaction: the trace context kept
        # there must survive, and SQLite's JSON functions treat BLOBs differently by version.
        with self._transaction() as db:
            row = db.execute(
                "SELECT extra FROM tasks WHERE task_id = ? AND status IN (?, ?)", (task_id, _QUEUED, _PROCESSING)
            ).fetchone()
            if row is None:
                return False
            extra = _decode_extra(row[0])
            extra.outputs = outputs
            now = now_ms()
            db.execute(
                "UPDATE tasks SET status = ?, progress_percent = 100, eta = 0, reason = '', seed = ?, "
                "complete_time_ms = ?, extra = ? WHERE task_id = ?",
                (TaskStatus.SUCCEED.value, seed, now, _encode_extra(extra), task_id),
            )
            db.execute(_ENQUEUE_WEBHOOK, (now, now, task_id))
        return True

    async def fail(self, task_id: str, reason: str) -> bool:
        with self._transaction() as db:
            return self._fail(db, task_id, reason, now_ms())

    @staticmethod
    def _fail(db: sqlite3.Connection, task_id: str, reason: str, now: int) -> bool:
        changed = db.execute(
            "UPDATE tasks SET status = ?, reason = ?, eta = 0, complete_time_ms = ? "
            "WHERE task_id = ? AND status IN (?, ?)",
            (TaskStatus.FAILED.value, reason, now, task_id, _QUEUED, _PROCESSING),
        ).rowcount
        if changed:
            db.execute(_ENQUEUE_WEBHOOK, (now, now, task_id))
        return changed == 1

    async def list_by_status(self, status: TaskStatus, limit: int) -> list[Task]:
        return self._select(
            f"SELECT {_COLUMNS} FROM tasks WHERE status = ? ORDER BY submit_time_ms, rowid LIMIT ?",
            (status.value, limit),
        )

    async def recover_interrupted(
        self, reason: str, *, max_claims: int | None = None, held_reason: str = ""
    ) -> list[str]:
        """Fail every PROCESSING task (called at startup, before any runner starts); the ids
        of the tasks failed, whose webhooks are now in the outbox.

        A task that was running when the process died lost its engine state mid-run, and
        it may be what killed the process: re-running it could crash every restart. Failing
        it ends it visibly, and the client decides whether to submit again. QUEUED tasks
        never started, so they stay queued and the runner takes them again, unless
        ``max_claims`` runners already took one and each time the process died before a
        clean stop (then ``held_reason`` fails it: it may be what kills the process).
        """
        now = now_ms()
        with self._transaction() as db:
            rows = db.execute("SELECT task_id FROM tasks WHERE status = ?", (_PROCESSING,)).fetchall()
            failed = [(row[0], reason) for row in rows]
            if max_claims is not None:
                rows = db.execute(
                    "SELECT task_id FROM tasks WHERE status = ? AND attempts >= ?", (_QUEUED, max_claims)
                ).fetchall()
                failed += [(row[0], held_reason) for row in rows]
            for task_id, why in failed:
                self._fail(db, task_id, why, now)
        return [task_id for task_id, _ in failed]

    async def queued_ids(self, page: int = 1000) -> AsyncIterator[tuple[str, str | None]]:
        """Every QUEUED task as (task_id, owner_key_id), oldest first, read a page at a time
        so a long backlog never sits in memory as whole rows."""
        after: tuple[int, int] = (-1, -1)
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT submit_time_ms, rowid, task_id, owner_key_id FROM tasks WHERE status = ? "
                    "AND (submit_time_ms, rowid) > (?, ?) ORDER BY submit_time_ms, rowid LIMIT ?",
                    (_QUEUED, *after, page),
                ).fetchall()
            for row in rows:
                yield row[2], row[3]
            if len(rows) < page:
                return
            after = (rows[-1][0], rows[-1][1])

    async def ids_with_status(self, status: TaskStatus) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT task_id FROM tasks WHERE status = ?", (status.value,)).fetchall()
        return [row[0] for row in rows]

    async def delete_finished_before(self, cutoff_ms: int, limit: int = 500) -> int:
        """Delete up to ``limit`` finished tasks (with their stored bodies and any webhook still
        pending) that completed before ``cutoff_ms``; how many. Small batches keep each write
        transaction short."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT task_id FROM tasks WHERE complete_time_ms < ? AND status IN (?, ?) LIMIT ?",
                (cutoff_ms, *_FINISHED, limit),
            ).fetchall()
            ids = [(row[0],) for row in rows]
            db.executemany("DELETE FROM webhook_outbox WHERE task_id = ?", ids)
            db.executemany("DELETE FROM tasks WHERE task_id = ?", ids)
        return len(ids)

    # -- the webhook outbox ------------------------------------------------------------------

    async def due_webhooks(self, now_ms: int, limit: int, lease_ms: int) -> list[PendingWebhook]:
        with self._transaction() as db:
            rows = db.execute(
                "SELECT task_id, url, attempts, next_attempt_ms FROM webhook_outbox WHERE next_attempt_ms <= ? "
                "ORDER BY next_attempt_ms LIMIT ?",
                (now_ms, limit),
            ).fetchall()
            db.executemany(
                "UPDATE webhook_outbox SET next_attempt_ms = ? WHERE task_id = ?",
                [(now_ms + lease_ms, row[0]) for row in rows],
            )
        return [PendingWebhook(task_id=r[0], url=r[1], attempts=r[2], next_attempt_ms=r[3]) for r in rows]

    async def next_webhook_due(self) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT MIN(next_attempt_ms) FROM webhook_outbox").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def webhook_done(self, task_id: str) -> None:
        """Delivered, or given up: out of the outbox."""
        self._write("DELETE FROM webhook_outbox WHERE task_id = ?", (task_id,))

    async def webhook_retry(self, task_id: str, attempts: int, next_attempt_ms: int) -> None:
        self._write(
            "UPDATE webhook_outbox SET attempts = ?, next_attempt_ms = ? WHERE task_id = ?",
            (attempts, next_attempt_ms, task_id),
        )

    async def pending_webhooks(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM webhook_outbox").fetchone()[0])

    async def status_counts(self) -> dict[TaskStatus, int]:
        """Tasks by status, for /metrics (an indexed GROUP BY, cheap enough at scrape time)."""
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status").fetchall()
        return {TaskStatus(status): count for status, count in rows}

    async def next_queued(self, limit: int) -> list[Task]:
        """The oldest QUEUED tasks; a runner claims each with ``mark_processing``."""
        return await self.list_by_status(TaskStatus.QUEUED, limit)


if TYPE_CHECKING:
    from server.settings import Settings

    # mypy proves the implementation satisfies the protocol; never runs.
    _conforms: TaskStore = SqliteTaskStore(Path())


def open_task_store(settings: Settings) -> TaskStore:
    """The store settings name: Redis for a ``redis://`` or ``rediss://`` ``store_url`` (shared
    by the replicas), else SQLite in the data dir."""
    if settings.store_url:
        from server.tasks.store_redis import RedisTaskStore  # redis-py only when it is used

        return RedisTaskStore(
            settings.store_url, timeout_s=settings.store_timeout_s, retry_after_s=settings.store_retry_after_s
        )
    return SqliteTaskStore(settings.data_path / "tasks.sqlite3")
