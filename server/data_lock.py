"""One server process per data dir: an exclusive ``flock`` on ``<data_dir>/omniserve.lock``.

Two processes on one data dir would each think they own the task store: the second one's
restart recovery would fail the first one's running tasks, and both would run the same
queued tasks. The lock is held for the process's life and released by the kernel when the
process dies, however it dies (kill -9 included), so a stale lock never blocks a restart.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "omniserve.lock"


class DataDirLocked(RuntimeError):
    pass


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise DataDirLocked naming the process that holds it."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirLocked(
                f"another omniserve process (pid {holder}) is using the data dir {self.path.parent}; "
                "refusing to start (stop it first, or give this one its own data_dir)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
