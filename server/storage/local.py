"""Task outputs on the local disk, served through HMAC-signed, expiring URLs.

A URL carries its own proof (``expires`` and an HMAC of key and expiry), so the file route
needs no API key: the Novita SDK downloads ``image_url`` without sending one, and a URL
handed to a third party stops working once it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from engines.workpools import WorkPool, run_in

log = logging.getLogger("omniserve")

SECRET_BYTES = 32

# "<task_id>/<name>.<ext>". No dots except the one before the extension, no separators
# other than the one slash, first characters alphanumeric: "..", absolute paths,
# backslashes, NULs and hidden/temporary files can never match.
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
_KEY_RE = re.compile(rf"({_SEGMENT})/{_SEGMENT}\.[a-z0-9]{{1,8}}")
_TASK_DIR_RE = re.compile(_SEGMENT)


class InvalidKey(ValueError):
    pass


def validate_key(key: str) -> str:
    if _KEY_RE.fullmatch(key) is None:
        raise InvalidKey(f"invalid storage key {key!r}")
    return key


def _is_valid_key(key: str) -> bool:
    return _KEY_RE.fullmatch(key) is not None


class LocalStorage:
    """Files under ``root/<task_id>/``; blocking I/O, so async callers use a thread for
    large writes (``await asyncio.to_thread(storage.put, key, data)``)."""

    def __init__(self, root: Path, secret: bytes | Callable[[], bytes], base_url_path: str = "/v3/files") -> None:
        """``secret``: the signing key, or what fetches it when first needed (one shared by
        replicas, server/storage/signing_key.py)."""
        if isinstance(secret, bytes) and len(secret) < SECRET_BYTES:
            raise ValueError(f"the signing secret needs at least {SECRET_BYTES} bytes")
        self.root = root
        self.base_url_path = base_url_path.rstrip("/")
        self._secret = secret
        root.mkdir(parents=True, exist_ok=True)

    def put(self, key: str, data: bytes) -> None:
        """Write atomically: readers see the old file or the whole new one, never a part."""
        path = self.root / validate_key(key)
        path.parent.mkdir(exist_ok=True)
        # The temporary name starts with a dot, so no key can ever address it.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                # The task is marked SUCCEED right after: its files must outlive a crash.
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _signature(self, key: str, expires: int) -> str:
        # The newline keeps (key, expires) unambiguous: "a/b.png" + "123" would otherwise
        # sign the same bytes as "a/b.png1" + "23".
        secret = self._secret if isinstance(self._secret, bytes) else self._secret()
        return hmac.new(secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def signed_path(self, key: str, ttl_s: int, now: float | None = None) -> str:
        validate_key(key)
        expires = int(time.time() if now is None else now) + ttl_s
        return f"{self.base_url_path}/{key}?expires={expires}&signature={self._signature(key, expires)}"

    def verify(self, key: str, expires: int, signature: str, now: float | None = None) -> bool:
        if not _is_valid_key(key):
            return False
        if (time.time() if now is None else now) >= expires:
            return False
        # Compared as bytes: compare_digest refuses non-ASCII str, and a query string may hold any.
        return hmac.compare_digest(self._signature(key, expires).encode(), signature.encode())

    def open_path(self, key: str) -> Path | None:
        """The file for a key, or None when the key is invalid or nothing is stored."""
        if not _is_valid_key(key):
            return None
        path = self.root / key
        return path if path.is_file() else None

    def cleanup_expired(self, max_age_s: float, now: float | None = None) -> int:
        """Delete task folders whose newest file is older than ``max_age_s``; how many."""
        cutoff = (time.time() if now is None else now) - max_age_s
        removed = 0
        for folder in self.root.iterdir():
            if not folder.is_dir() or folder.is_symlink() or _TASK_DIR_RE.fullmatch(folder.name) is None:
                continue
            try:
                # The newest file decides: a task still being written keeps all its outputs.
                newest = max((entry.stat().st_mtime for entry in folder.iterdir()), default=folder.stat().st_mtime)
            except OSError:  # removed or changed under us: the next sweep decides
                continue
            if newest < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed


async def clean_outputs_periodically(storage: LocalStorage, max_age_s: float, interval_s: float = 600.0) -> None:
    """Delete task outputs past their age, now and then, until cancelled. A sweep that fails
    (the disk, a permission) is logged and the next one runs as planned: one bad folder must
    not stop every later cleanup."""
    while True:
        try:
            removed = await run_in(WorkPool.STORAGE, storage.cleanup_expired, max_age_s)
        except Exception:
            log.exception("task output cleanup failed; trying again in %g s", interval_s)
        else:
            if removed:
                log.info("removed %d expired task output folders", removed)
        await asyncio.sleep(interval_s)


def load_or_create_secret(path: Path) -> bytes:
    """The signing secret at ``path``, created (random, mode 0600) on first use.

    It lives on disk so signed URLs stay valid across restarts. Creation writes a
    temporary file and hard-links it into place: the link fails if another process won
    the race, and both then use the same secret; no reader ever sees a partial file.
    """
    with contextlib.suppress(FileNotFoundError):
        return _read_secret(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(secrets.token_bytes(SECRET_BYTES))
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    secret = path.read_bytes()
    if len(secret) < SECRET_BYTES:
        raise ValueError(f"{path} holds {len(secret)} bytes, fewer than a signing secret needs")
    return secret
