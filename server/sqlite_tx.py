"""The one way the server's SQLite stores (keys, tasks) write: an IMMEDIATE transaction."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def immediate_transaction(db: sqlite3.Connection, lock: threading.Lock) -> Iterator[sqlite3.Connection]:
    """Commit on success, roll back on any error. IMMEDIATE takes the write lock first: a busy
    database fails before any change, and two processes cannot both read a balance and then
    both spend it. `lock` keeps this process's threads apart on the shared connection."""
    with lock:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
