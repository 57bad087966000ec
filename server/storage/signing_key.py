"""The key output URLs are signed with, the same on every replica that shares outputs.

In order: the ``storage.url_signing_key`` setting; else, with a Redis store, a random key
made once in Redis (``SET NX``: the first replica's wins, every replica reads that one);
else ``<data_dir>/url-signing.key``, made on first use. So a URL one replica signs verifies
on any other.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from server.keystore import StoreUnavailable
from server.storage.local import SECRET_BYTES, load_or_create_secret

if TYPE_CHECKING:  # redis-py is imported only where a Redis store is used
    from server.redis_link import RedisLink

KEY_NAME = "url-signing-key"


class SharedSigningKey:
    """The key in Redis, fetched (made, the first time anywhere) once and then kept: a replica
    that starts while Redis is away serves, and signs once Redis is back (until then, signing
    or checking a URL answers 503)."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def __call__(self) -> bytes:
        if self._key is None:
            with self._lock:
                if self._key is None:
                    self._key = self._fetch()
        return self._key

    def _fetch(self) -> bytes:
        name = self._link.prefix + KEY_NAME
        with self._link.reaching() as db:
            db.set(name, secrets.token_hex(SECRET_BYTES), nx=True)
            stored = db.get(name)
        key = bytes.fromhex(str(stored))
        if len(key) < SECRET_BYTES:
            raise ValueError(f"Redis key {name} holds {len(key)} bytes, fewer than a signing key needs")
        return key


def url_signing_key(setting: str, link: RedisLink | None, key_file: Path) -> bytes | Callable[[], bytes]:
    """The signing key, or (with Redis) what fetches it: see the module's docstring."""
    if setting:
        return setting.encode()
    if link is not None:
        shared = SharedSigningKey(link)
        # Fetched now when Redis is up, so a later outage never reaches signing; a replica that
        # starts while it is away fetches on first use.
        with contextlib.suppress(StoreUnavailable):
            shared()
        return shared
    return load_or_create_secret(key_file)
