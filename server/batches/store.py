"""Durable batch state: files' metadata, batches, and one row per line whose result is recorded.

A line's result row is written once (its primary key is the batch and the line): the row is
what makes a line count as done, so a restart runs exactly the lines without one. Request
counts are read from these rows, never kept apart from them, so they cannot drift.
File contents live in a folder (``FileContents``), written whole with a rename.

`BatchStore` is what callers use; `SqliteBatchStore` keeps it in the data dir (one server), and
server/batches/store_redis.py in the Redis that replicas share (settings' ``store_url``).
Every method blocks: callers run them on the STORAGE pool (engines/workpools.py).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

import msgspec

from schemas.openai.batches import Batch, BatchRequestCounts, FileObject
from server.keystore import replica_id
from server.settings import Settings
from server.sqlite_tx import immediate_transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch_files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    record BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_status ON batches (status);
CREATE TABLE IF NOT EXISTS batch_lines (
    batch_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    output BLOB NOT NULL,
    PRIMARY KEY (batch_id, line)
);
"""

log = logging.getLogger("omniserve.batches")

ACTIVE_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")


def owner_column(key_id: str | None) -> str:
    """Who owns a row: the key id, or "" for the callers of an open server (one owner)."""
    return key_id or ""


class LineResult(msgspec.Struct, frozen=True):
    line: int
    ok: bool
    output: bytes  # one encoded BatchOutputLine


class BatchStore(Protocol):
    """Files' metadata, batches and their recorded lines. A batch's ``request_counts`` are
    counted from its recorded lines; a line's result, once recorded, is never replaced.
    A shared store that cannot be reached raises StoreUnavailable (server/keystore.py)."""

    def close(self) -> None: ...
    def add_file(self, owner: str, file: FileObject, *, max_files: int) -> bool: ...
    def file(self, owner: str, file_id: str) -> FileObject | None: ...
    def files(
        self, owner: str, *, purpose: str | None, after: str | None, limit: int
    ) -> tuple[list[FileObject], bool]: ...
    def delete_file(self, owner: str, file_id: str) -> bool: ...
    def file_in_use(self, owner: str, file_id: str) -> str | None: ...
    def add_batch(self, owner: str, batch: Batch) -> None: ...
    def batch(self, owner: str | None, batch_id: str) -> Batch | None: ...
    def owner_of(self, batch_id: str) -> str | None: ...
    def batches(self, owner: str, *, after: str | None, limit: int) -> tuple[list[Batch], bool]: ...
    def active_batch_ids(self) -> list[str]: ...
    def update(
        self,
        batch_id: str,
        leaving: Iterable[str],
        change: Callable[[Batch], None],
        *,
        results: Iterable[LineResult] = (),
        files: Iterable[tuple[str, FileObject]] = (),
    ) -> Batch | None: ...
    def record_line(self, batch_id: str, result: LineResult) -> bool: ...
    def recorded_lines(self, batch_id: str) -> set[int]: ...
    def record_lines(self, batch_id: str, results: Iterable[LineResult]) -> None: ...
    def outputs(self, batch_id: str, *, ok: bool, chunk: int = 1000) -> Iterator[bytes]: ...


class SqliteBatchStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a recorded line survives a power cut
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._file_decoder = msgspec.json.Decoder(FileObject)
        self._batch_decoder = msgspec.json.Decoder(Batch)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- files -------------------------------------------------------------------------------

    def add_file(self, owner: str, file: FileObject, *, max_files: int) -> bool:
        """Record ``file``; False (nothing recorded) when the owner already holds ``max_files``."""
        with immediate_transaction(self._db, self._lock) as db:
            (held,) = db.execute("SELECT count(*) FROM batch_files WHERE owner = ?", (owner,)).fetchone()
            if held >= max_files:
                return False
            db.execute(
                "INSERT INTO batch_files (id, owner, record) VALUES (?, ?, ?)",
                (file.id, owner, msgspec.json.encode(file)),
            )
            return True

    def file(self, owner: str, file_id: str) -> FileObject | None:
        with self._lock:
            row = self._db.execute(
                "SELECT record FROM batch_files WHERE id = ? AND owner = ?", (file_id, owner)
            ).fetchone()
        return self._file_decoder.decode(row[0]) if row else None

    def files(self, owner: str, *, purpose: str | None, after: str | None, limit: int) -> tuple[list[FileObject], bool]:
        """The owner's files, newest first, after the file ``after``; and whether more follow."""
        query = "SELECT record FROM batch_files WHERE owner = ?"
        args: list[object] = [owner]
        if after is not None:
            query += " AND seq < coalesce((SELECT seq FROM batch_files WHERE id = ? AND owner = ?), -1)"
            args += [after, owner]
        rows = self._select(query, args, limit + 1 if purpose is None else None)
        found = [self._file_decoder.decode(row[0]) for row in rows]
        if purpose is not None:
            found = [file for file in found if file.purpose == purpose][: limit + 1]
        return found[:limit], len(found) > limit

    def delete_file(self, owner: str, file_id: str) -> bool:
        with immediate_transaction(self._db, self._lock) as db:
            return db.execute("DELETE FROM batch_files WHERE id = ? AND owner = ?", (file_id, owner)).rowcount > 0

    def file_in_use(self, owner: str, file_id: str) -> str | None:
        """The id of an unfinished batch of ``owner`` that reads ``file_id``, if any."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT record FROM batches WHERE owner = ? AND status IN ({','.join('?' * len(ACTIVE_STATUSES))})",
                (owner, *ACTIVE_STATUSES),
            ).fetchall()
        for (record,) in rows:
            batch = self._batch_decoder.decode(record)
            if batch.input_file_id == file_id:
                return batch.id
        return None

    # -- batches -----------------------------------------------------------------------------

    def add_batch(self, owner: str, batch: Batch) -> None:
        with immediate_transaction(self._db, self._lock) as db:
            db.execute(
                "INSERT INTO batches (id, owner, status, record) VALUES (?, ?, ?, ?)",
                (batch.id, owner, batch.status, msgspec.json.encode(batch)),
            )

    def batch(self, owner: str | None, batch_id: str) -> Batch | None:
        """The batch with its counts; ``owner`` None: whoever owns it (the runner)."""
        query, args = "SELECT record FROM batches WHERE id = ?", [batch_id]
        if owner is not None:
            query, args = query + " AND owner = ?", [batch_id, owner]
        with self._lock:
            row = self._db.execute(query, args).fetchone()
        return self._with_counts(self._batch_decoder.decode(row[0])) if row else None

    def owner_of(self, batch_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT owner FROM batches WHERE id = ?", (batch_id,)).fetchone()
        return row[0] if row else None

    def batches(self, owner: str, *, after: str | None, limit: int) -> tuple[list[Batch], bool]:
        query = "SELECT record FROM batches WHERE owner = ?"
        args: list[object] = [owner]
        if after is not None:
            query += " AND seq < coalesce((SELECT seq FROM batches WHERE id = ? AND owner = ?), -1)"
            args += [after, owner]
        rows = self._select(query, args, limit + 1)
        found = [self._with_counts(self._batch_decoder.decode(row[0])) for row in rows]
        return found[:limit], len(found) > limit

    def active_batch_ids(self) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT id FROM batches WHERE status IN ({','.join('?' * len(ACTIVE_STATUSES))}) ORDER BY seq",
                ACTIVE_STATUSES,
            ).fetchall()
        return [row[0] for row in rows]

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
        ``results`` (line rows not yet written) and ``files`` in the same transaction; the
        batch as it now is, or None when its status did not allow the change."""
        leaving = tuple(leaving)
        with immediate_transaction(self._db, self._lock) as db:
            row = db.execute("SELECT record FROM batches WHERE id = ?", (batch_id,)).fetchone()
            if row is None:
                return None
            batch = self._batch_decoder.decode(row[0])
            if batch.status not in leaving:
                return None
            change(batch)
            db.executemany(
                "INSERT OR IGNORE INTO batch_lines (batch_id, line, ok, output) VALUES (?, ?, ?, ?)",
                [(batch_id, result.line, int(result.ok), result.output) for result in results],
            )
            db.executemany(
                "INSERT INTO batch_files (id, owner, record) VALUES (?, ?, ?)",
                [(file.id, owner, msgspec.json.encode(file)) for owner, file in files],
            )
            db.execute(
                "UPDATE batches SET status = ?, record = ? WHERE id = ?",
                (batch.status, msgspec.json.encode(batch), batch_id),
            )
        return batch

    # -- lines -------------------------------------------------------------------------------

    def record_line(self, batch_id: str, result: LineResult) -> bool:
        """Record one line's result; False when it already had one (it is never replaced)."""
        with immediate_transaction(self._db, self._lock) as db:
            inserted = db.execute(
                "INSERT OR IGNORE INTO batch_lines (batch_id, line, ok, output) VALUES (?, ?, ?, ?)",
                (batch_id, result.line, int(result.ok), result.output),
            )
            return inserted.rowcount > 0

    def recorded_lines(self, batch_id: str) -> set[int]:
        with self._lock:
            rows = self._db.execute("SELECT line FROM batch_lines WHERE batch_id = ?", (batch_id,)).fetchall()
        return {row[0] for row in rows}

    def record_lines(self, batch_id: str, results: Iterable[LineResult]) -> None:
        """Record several lines at once (those never run, for an expired batch)."""
        with immediate_transaction(self._db, self._lock) as db:
            db.executemany(
                "INSERT OR IGNORE INTO batch_lines (batch_id, line, ok, output) VALUES (?, ?, ?, ?)",
                [(batch_id, result.line, int(result.ok), result.output) for result in results],
            )

    def outputs(self, batch_id: str, *, ok: bool, chunk: int = 1000) -> Iterator[bytes]:
        """The recorded outputs that succeeded (``ok``) or failed, in input order, read a chunk
        at a time so that a large batch is never held in memory whole nor the lock held long."""
        after = -1
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT line, output FROM batch_lines WHERE batch_id = ? AND ok = ? AND line > ? "
                    "ORDER BY line LIMIT ?",
                    (batch_id, int(ok), after, chunk),
                ).fetchall()
            for _, output in rows:
                yield bytes(output)
            if len(rows) < chunk:
                return
            after = rows[-1][0]

    # -- helpers -----------------------------------------------------------------------------

    def _select(self, query: str, args: list[object], limit: int | None) -> list[tuple[bytes]]:
        query += " ORDER BY seq DESC"
        if limit is not None:
            query += " LIMIT ?"
            args = [*args, limit]
        with self._lock:
            return self._db.execute(query, args).fetchall()

    def _with_counts(self, batch: Batch) -> Batch:
        with self._lock:
            completed, failed = self._db.execute(
                "SELECT coalesce(sum(ok), 0), coalesce(sum(1 - ok), 0) FROM batch_lines WHERE batch_id = ?",
                (batch.id,),
            ).fetchone()
        batch.request_counts = BatchRequestCounts(
            total=batch.request_counts.total, completed=int(completed), failed=int(failed)
        )
        return batch


class FileContents:
    """File bytes under one folder, each written whole (temporary file, fsync, rename), so a
    crash leaves either the complete file or none."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, file_id: str) -> Path:
        return self.folder / f"{file_id}.jsonl"

    def write(self, file_id: str, data: bytes) -> None:
        target = self.path(file_id)
        temporary = target.with_suffix(".partial")
        with open(temporary, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)

    def write_lines(self, file_id: str, lines: Iterable[bytes]) -> int:
        """Write ``lines`` (each followed by a newline) whole, as ``write`` does; the bytes written."""
        target = self.path(file_id)
        temporary = target.with_suffix(".partial")
        size = 0
        with open(temporary, "wb") as out:
            for line in lines:
                out.write(line)
                out.write(b"\n")
                size += len(line) + 1
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
        return size

    def read(self, file_id: str) -> bytes:
        return self.path(file_id).read_bytes()

    def delete(self, file_id: str) -> None:
        self.path(file_id).unlink(missing_ok=True)


class BatchLeases(Protocol):
    """Which replica runs a batch, when replicas share the store: a lease it renews, which
    another replica takes over once it has expired (its holder died). Also numbers each run
    of a line, so that the charge of a run cut short can be found and refunded."""

    def claim(self, batch_id: str) -> bool: ...
    def renew(self, batch_id: str) -> str | None: ...
    def release(self, batch_id: str) -> None: ...
    def line_attempt(self, batch_id: str, line: int) -> int: ...


def open_batch_store(settings: Settings, data_path: Path) -> tuple[BatchStore, FileContents, BatchLeases | None]:
    """The store settings name (as open_keystore picks the key store), the folder of the
    files' bytes, and the leases of a shared store (None: one server runs every batch)."""
    folder = Path(settings.batches.files_dir).expanduser() if settings.batches.files_dir else data_path / "batch_files"
    contents = FileContents(folder)
    if not settings.store_url:
        return SqliteBatchStore(data_path / "batches.sqlite3"), contents, None
    from server.batches.store_redis import RedisBatchStore  # redis-py only when it is used

    if not settings.batches.files_dir:
        log.warning(
            "batches.files_dir is empty: files uploaded here are read only here, so another replica "
            "running their batch fails it (missing_input_file); set it to a folder all replicas share"
        )

    store = RedisBatchStore(
        settings.store_url,
        replica=replica_id(data_path),
        timeout_s=settings.store_timeout_s,
        retry_after_s=settings.store_retry_after_s,
        lease_s=settings.cluster.lease_s,
    )
    return store, contents, store
