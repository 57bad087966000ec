"""API keys and their accounts: the `KeyStore` protocol, and its SQLite implementation.

Keys are stored only as SHA-256 hashes: in SQLite under the data dir (`SqliteKeyStore`, the
default), or in Redis when settings' ``store_url`` names one (server/keystore_redis.py), which
several replicas of the server share. `open_keystore` picks the one the settings name.

A key reads ``os-<id>.<secret>``: the id finds the row, and the hash of the whole key is
compared in constant time. Keys are 256-bit random, so a plain hash is enough at rest;
a slow password hash would only tax every request.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Protocol

import msgspec

from schemas.errors import ApiError, ErrorCode
from server.sqlite_tx import immediate_transaction

KEY_PREFIX = "os-"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hash BLOB NOT NULL,
    created_at REAL NOT NULL,
    rotated_at REAL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS charges (
    request_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    amount REAL NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    settled_at REAL
);
CREATE INDEX IF NOT EXISTS charges_state ON charges (state);
"""

# Account columns added after the first release: added to an existing table on open, so a
# key store from an older version keeps its keys. NULL credits means unmetered; NULL
# limits mean the settings' defaults (0: no limit).
_ACCOUNT_COLUMNS = {
    "credits": "REAL",
    "subscription_active": "INTEGER NOT NULL DEFAULT 1",
    "hour_limit": "INTEGER",
    "day_limit": "INTEGER",
}

# The role column, added the same way: keys from before it are customer keys (0); an admin key
# (1) may also call the operator routes (/admin).
_ROLE_COLUMNS = {"admin": "INTEGER NOT NULL DEFAULT 0"}

RESERVED, COMMITTED, REFUNDED = "reserved", "committed", "refunded"


class KeyInfo(msgspec.Struct, kw_only=True):
    id: str
    name: str
    created_at: float
    rotated_at: float | None
    revoked_at: float | None
    admin: bool = False

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class KeyAccount(msgspec.Struct, kw_only=True):
    """What accounting needs to know about a key, read on each request."""

    credits: float | None  # None: unmetered
    subscription_active: bool
    hour_limit: int | None  # None: the settings' default; 0: no limit
    day_limit: int | None


class KeyNotFound(LookupError):
    pass


class InsufficientCredits(Exception):
    def __init__(self, balance: float) -> None:
        super().__init__(f"balance {balance}")
        self.balance = balance


class StoreUnavailable(ApiError):
    """The key store (or the task store: ``what``) cannot be reached (a shared store that is
    down or too slow): 503 with Retry-After in every envelope; the request may be retried
    once the store is back."""

    def __init__(self, retry_after: float, *, what: str = "shared store") -> None:
        super().__init__(
            ErrorCode.SERVICE_NOT_AVAILABLE,
            f"The {what} is unavailable; try again shortly.",
            retry_after=retry_after,
        )


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_key(key_id: str) -> str:
    return f"{KEY_PREFIX}{key_id}.{secrets.token_urlsafe(32)}"


def key_id_of(key: str) -> str | None:
    if not key.startswith(KEY_PREFIX) or "." not in key:
        return None
    return key[len(KEY_PREFIX) :].split(".", 1)[0]


class KeyStore(Protocol):
    """What the server and the `keys` CLI need of a key store. Every implementation keeps the
    same semantics: keys only as hashes; a revoke or rotate takes effect on the next lookup;
    ``reserve`` never overdraws and a request id pays at most once; ``settle`` of a request id
    that is not reserved (any more) changes nothing, whichever server made it;
    ``open_reservations`` are the ones this server made (for SQLite, the only server of its data
    dir), which its startup settles. A store that cannot be reached raises `StoreUnavailable`."""

    # Whether calls cross the network (Redis): key checks, on every request, hand them to a
    # thread (Authenticator.checked). Other callers on the event loop call directly, bounded by
    # the store's timeout.
    remote: bool

    def close(self) -> None: ...
    def create(self, name: str, *, admin: bool = False) -> tuple[KeyInfo, str]: ...
    def list(self) -> list[KeyInfo]: ...
    def revoke(self, key_id: str) -> None: ...
    def rotate(self, key_id: str) -> str: ...
    def has_active_keys(self) -> bool: ...
    def verify(self, key: str) -> str | None: ...
    def identify(self, key: str) -> tuple[str, bool] | None: ...
    def account(self, key_id: str) -> KeyAccount | None: ...
    def set_credits(self, key_id: str, credits: float | None) -> None: ...
    def add_credits(self, key_id: str, amount: float) -> float: ...
    def set_limits(self, key_id: str, hour_limit: int | None, day_limit: int | None) -> None: ...
    def set_subscription(self, key_id: str, active: bool) -> None: ...
    def reserve(self, request_id: str, key_id: str, amount: float) -> float | None: ...
    def settle(self, request_id: str, *, refund: bool, keep: float | None = None) -> bool: ...
    def open_reservations(self) -> tuple[str, ...]: ...


def open_keystore(store_url: str, data_path: Path, *, timeout_s: float, retry_after_s: float) -> KeyStore:
    """The store settings name: Redis for a ``redis://`` or ``rediss://`` URL, else SQLite
    in the data dir."""
    if store_url:
        from server.keystore_redis import RedisKeyStore  # redis-py only when it is used

        return RedisKeyStore(store_url, replica=replica_id(data_path), timeout_s=timeout_s, retry_after_s=retry_after_s)
    return SqliteKeyStore(data_path / "keys.sqlite3")


def replica_id(data_path: Path) -> str:
    """This server's id among the replicas sharing a store: kept in its data dir, so a restart
    finds the reservations it left open (and only those)."""
    path = data_path / "replica-id"
    with contextlib.suppress(FileNotFoundError):
        return path.read_text().strip()
    data_path.mkdir(parents=True, exist_ok=True)
    path.write_text(secrets.token_hex(8))
    return path.read_text().strip()


class SqliteKeyStore:
    remote = False  # sub-millisecond local lookups, called on the event loop

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # One connection, serialised by a lock: lookups are sub-millisecond, and the
        # CLI writes from another process (SQLite's own locking covers that).
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # The CLI and the server write the same file; a short wait beats an instant failure.
        self._db.execute("PRAGMA busy_timeout=2000")
        self._db.executescript(_SCHEMA)
        self._migrate()
        self._lock = threading.Lock()

    def _migrate(self) -> None:
        present = {row[1] for row in self._db.execute("PRAGMA table_info(api_keys)")}
        for column, declaration in {**_ACCOUNT_COLUMNS, **_ROLE_COLUMNS}.items():
            if column not in present:
                try:
                    self._db.execute(f"ALTER TABLE api_keys ADD COLUMN {column} {declaration}")
                except sqlite3.OperationalError as exc:
                    # Another process opening the same file may have added it first.
                    if "duplicate column" not in str(exc):
                        raise

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return immediate_transaction(self._db, self._lock)

    def close(self) -> None:
        self._db.close()

    def create(self, name: str, *, admin: bool = False) -> tuple[KeyInfo, str]:
        key_id = secrets.token_hex(6)
        key = new_key(key_id)
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO api_keys (id, name, hash, created_at, admin) VALUES (?, ?, ?, ?, ?)",
                (key_id, name, hash_key(key), now, int(admin)),
            )
        return KeyInfo(id=key_id, name=name, created_at=now, rotated_at=None, revoked_at=None, admin=admin), key

    def list(self) -> list[KeyInfo]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, name, created_at, rotated_at, revoked_at, admin FROM api_keys ORDER BY created_at"
            ).fetchall()
        return [
            KeyInfo(id=r[0], name=r[1], created_at=r[2], rotated_at=r[3], revoked_at=r[4], admin=bool(r[5]))
            for r in rows
        ]

    def revoke(self, key_id: str) -> None:
        with self._lock:
            cursor = self._db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), key_id)
            )
        if cursor.rowcount == 0:
            raise KeyNotFound(key_id)

    def rotate(self, key_id: str) -> str:
        """A new secret for the same key id; the old secret stops working at once."""
        key = new_key(key_id)
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
        identity = self.identify(key)
        return identity[0] if identity is not None else None

    def identify(self, key: str) -> tuple[str, bool] | None:
        """The key's id and whether it is an admin key, when the key is valid and not revoked."""
        key_id = key_id_of(key)
        if key_id is None:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT hash, admin FROM api_keys WHERE id = ? AND revoked_at IS NULL", (key_id,)
            ).fetchone()
        if row is None or not hmac.compare_digest(row[0], hash_key(key)):
            return None
        return key_id, bool(row[1])

    # Accounts: credits, subscription and rate limits per key.

    def account(self, key_id: str) -> KeyAccount | None:
        with self._lock:
            row = self._db.execute(
                "SELECT credits, subscription_active, hour_limit, day_limit FROM api_keys "
                "WHERE id = ? AND revoked_at IS NULL",
                (key_id,),
            ).fetchone()
        if row is None:
            return None
        return KeyAccount(credits=row[0], subscription_active=bool(row[1]), hour_limit=row[2], day_limit=row[3])

    def _update(self, sql: str, params: tuple[object, ...], key_id: str) -> None:
        with self._transaction() as db:
            if db.execute(sql, params).rowcount == 0:
                raise KeyNotFound(key_id)

    def set_credits(self, key_id: str, credits: float | None) -> None:
        """Set the balance; None makes the key unmetered."""
        self._update("UPDATE api_keys SET credits = ? WHERE id = ? AND revoked_at IS NULL", (credits, key_id), key_id)

    def add_credits(self, key_id: str, amount: float) -> float:
        """Add to the balance (an unmetered key starts from 0); the new balance."""
        with self._transaction() as db:
            row = db.execute(
                "UPDATE api_keys SET credits = COALESCE(credits, 0) + ? WHERE id = ? AND revoked_at IS NULL "
                "RETURNING credits",
                (amount, key_id),
            ).fetchone()
        if row is None:
            raise KeyNotFound(key_id)
        return float(row[0])

    def set_limits(self, key_id: str, hour_limit: int | None, day_limit: int | None) -> None:
        self._update(
            "UPDATE api_keys SET hour_limit = ?, day_limit = ? WHERE id = ? AND revoked_at IS NULL",
            (hour_limit, day_limit, key_id),
            key_id,
        )

    def set_subscription(self, key_id: str, active: bool) -> None:
        self._update(
            "UPDATE api_keys SET subscription_active = ? WHERE id = ? AND revoked_at IS NULL",
            (int(active), key_id),
            key_id,
        )

    def reserve(self, request_id: str, key_id: str, amount: float) -> float | None:
        """Take ``amount`` from a metered key's balance for ``request_id``; the balance left
        (None for an unmetered key). The same request id never pays twice: a repeated call
        changes nothing. Raises InsufficientCredits, leaving the balance as it was."""
        with self._transaction() as db:
            row = db.execute("SELECT credits FROM api_keys WHERE id = ?", (key_id,)).fetchone()
            if row is None or row[0] is None:
                return None
            if db.execute("SELECT 1 FROM charges WHERE request_id = ?", (request_id,)).fetchone():
                return float(row[0])
            # The condition in SQL is what keeps the balance from going negative.
            paid = db.execute(
                "UPDATE api_keys SET credits = credits - ? WHERE id = ? AND credits >= ? RETURNING credits",
                (amount, key_id, amount),
            ).fetchone()
            if paid is None:
                raise InsufficientCredits(float(row[0]))
            db.execute(
                "INSERT INTO charges (request_id, key_id, amount, state, created_at) VALUES (?, ?, ?, ?, ?)",
                (request_id, key_id, amount, RESERVED, time.time()),
            )
        return float(paid[0])

    def settle(self, request_id: str, *, refund: bool, keep: float | None = None) -> bool:
        """End a reservation: keep the credits, or give them back. ``keep`` keeps only that
        much of it (at most what was reserved) and gives back the rest. False when there was
        no open reservation (unmetered, or already settled): settling twice does nothing."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT key_id, amount FROM charges WHERE request_id = ? AND state = ?", (request_id, RESERVED)
            ).fetchone()
            if row is None:
                return False
            key_id, reserved = row[0], float(row[1])
            kept = 0.0 if refund else reserved if keep is None else min(max(keep, 0.0), reserved)
            db.execute(
                "UPDATE charges SET state = ?, amount = ?, settled_at = ? WHERE request_id = ?",
                (REFUNDED, reserved, time.time(), request_id) if refund else (COMMITTED, kept, time.time(), request_id),
            )
            if reserved > kept:
                db.execute("UPDATE api_keys SET credits = credits + ? WHERE id = ?", (reserved - kept, key_id))
        return True

    def open_reservations(self) -> tuple[str, ...]:
        with self._lock:
            rows = self._db.execute("SELECT request_id FROM charges WHERE state = ?", (RESERVED,)).fetchall()
        return tuple(row[0] for row in rows)
