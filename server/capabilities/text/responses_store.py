"""Stored responses (``store: true``), in SQLite under the data dir.

A row holds the Response object and the conversation it answered (the input of every response
before it in a ``previous_response_id`` chain, then its own), so a chain reads one row per
turn. Rows belong to the key that made them: another key's id reads as unknown. Bounded in
time (``responses.retention_s``) and in number per key (``responses.max_stored_per_key``, the
oldest go first); expired rows are deleted as new ones are written.

The methods block; the service calls them through the STORAGE work pool.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from schemas.openai.responses import ConversationItem, Response
from server.sqlite_tx import immediate_transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL,
    own_input_start INTEGER NOT NULL,
    conversation BLOB NOT NULL,
    response BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_owner_created ON responses (owner, created_at);
CREATE INDEX IF NOT EXISTS responses_created ON responses (created_at);
"""

# The owner of rows made on an open server (no key).
OPEN_OWNER = ""

_conversation_decoder = msgspec.json.Decoder(list[ConversationItem])
_response_decoder = msgspec.json.Decoder(Response)
_encoder = msgspec.json.Encoder()


class StoredResponse(msgspec.Struct, kw_only=True):
    response: Response
    # Every input item this response answered; its own input starts at own_input_start (the
    # items before are the chain's, its previous responses' inputs and outputs).
    conversation: list[ConversationItem]
    own_input_start: int

    @property
    def own_input(self) -> list[ConversationItem]:
        return self.conversation[self.own_input_start :]


def encoded_conversation(conversation: list[ConversationItem]) -> bytes:
    return _encoder.encode(conversation)


class ResponseStore:
    def __init__(
        self, path: Path, *, retention_s: float, max_per_owner: int, clock: Callable[[], float] = time.time
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=2000")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self.retention_s = retention_s
        self.max_per_owner = max_per_owner
        self._clock = clock

    def close(self) -> None:
        self._db.close()

    def _oldest_kept(self) -> float:
        """Rows created before this have expired (retention 0: none expire)."""
        return self._clock() - self.retention_s if self.retention_s > 0 else float("-inf")

    def put(self, owner: str, stored: StoredResponse) -> None:
        now = self._clock()
        with immediate_transaction(self._db, self._lock) as db:
            db.execute("DELETE FROM responses WHERE created_at < ?", (self._oldest_kept(),))
            db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
                (
                    stored.response.id,
                    owner,
                    now,
                    stored.own_input_start,
                    encoded_conversation(stored.conversation),
                    _encoder.encode(stored.response),
                ),
            )
            # The owner's oldest beyond the cap make room.
            db.execute(
                "DELETE FROM responses WHERE owner = ? AND id NOT IN "
                "(SELECT id FROM responses WHERE owner = ? ORDER BY created_at DESC, rowid DESC LIMIT ?)",
                (owner, owner, self.max_per_owner),
            )

    def get(self, owner: str, response_id: str) -> StoredResponse | None:
        with self._lock:
            row = self._db.execute(
                "SELECT own_input_start, conversation, response FROM responses "
                "WHERE id = ? AND owner = ? AND created_at >= ?",
                (response_id, owner, self._oldest_kept()),
            ).fetchone()
        if row is None:
            return None
        return StoredResponse(
            response=_response_decoder.decode(row[2]),
            conversation=_conversation_decoder.decode(row[1]),
            own_input_start=row[0],
        )

    def delete(self, owner: str, response_id: str) -> bool:
        with immediate_transaction(self._db, self._lock) as db:
            cursor = db.execute(
                "DELETE FROM responses WHERE id = ? AND owner = ? AND created_at >= ?",
                (response_id, owner, self._oldest_kept()),
            )
            return cursor.rowcount > 0

    def count(self, owner: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM responses WHERE owner = ?", (owner,)).fetchone()
        return int(row[0])
