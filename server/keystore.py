"""API keys, stored only as SHA-256 hashes in SQLite under the data dir.

A key reads ``os-<id>.<secret>``: the id finds the row, and the hash of the whole key is
compared in constant time. Keys are 256-bit random, so a plain hash is enough at rest;
a slow password hash would only tax every request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from pathlib import Path

import msgspec

KEY_PREFIX = "os-"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hash BLOB NOT NULL,
    created_at REAL NOT NULL,
    rotated_at REAL,
    revoked_at REAL
)
"""


class KeyInfo(msgspec.Struct, kw_only=True):
    id: str
    name: str
    created_at: float
    rotated_at: float | None
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class KeyNotFound(LookupError):
    pass


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _new_key(key_id: str) -> str:
    return f"{KEY_PREFIX}{key_id}.{secrets.token_urlsafe(32)}"


def _key_id(key: str) -> str | None:
    if not key.startswith(KEY_PREFIX) or "." not in key:
        return None
    return key[len(KEY_PREFIX) :].split(".", 1)[0]


class KeyStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # One connection, serialised by a lock: lookups are sub-millisecond, and the
        # CLI writes from another process (SQLite's own locking covers that).
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def create(self, name: str) -> tuple[KeyInfo, str]:
        key_id = secrets.token_hex(6)
        key = _new_key(key_id)
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO api_keys (id, name, hash, created_at) VALUES (?, ?, ?, ?)",
                (key_id, name, hash_key(key), now),
            )
        return KeyInfo(id=key_id, name=name, created_at=now, rotated_at=None, revoked_at=None), key

    def list(self) -> list[KeyInfo]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, name, created_at, rotated_at, revoked_at FROM api_keys ORDER BY created_at"
            ).fetchall()
        return [KeyInfo(id=r[0], name=r[1], created_at=r[2], rotated_at=r[3], revoked_at=r[4]) for r in rows]

    def revoke(self, key_id: str) -> None:
        with self._lock:
            cursor = self._db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), key_id)
            )
        if cursor.rowcount == 0:
            raise KeyNotFound(key_id)

    def rotate(self, key_id: str) -> str:
        """A new secret for the same key id; the old secret stops working at once."""
        key = _new_key(key_id)
        with self._lock:
            cursor = self._db.execute(
                "UPDATE api_keys SET hash = ?, rotated_at = ? WHERE id = ? AND revoked_at IS NULL",
                (hash_key(key), time.time(), key_id),
            )
        if cursor.rowcount == 0:
            raise KeyNotFound(key_id)
        return key

    def has_active_keys(self) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM api_keys WHERE revoked_at IS NULL LIMIT 1").fetchone()
        return row is not None

    def verify(self, key: str) -> str | None:
        """The key's id when the key is valid and not revoked, else None."""
        key_id = _key_id(key)
        if key_id is None:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT hash FROM api_keys WHERE id = ? AND revoked_at IS NULL", (key_id,)
            ).fetchone()
        if row is None:
            return None
        return key_id if hmac.compare_digest(row[0], hash_key(key)) else None
