"""Blocking engine work on a worker thread, stoppable from the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def run_cancellable(work: Callable[[threading.Event], T]) -> T:
    """`work(cancelled)` on a worker thread. A thread cannot be interrupted: when the awaiting
    task is cancelled, `cancelled` is set, and the work stops at its next check of it (the
    next denoising step, segment or device wait)."""
    cancelled = threading.Event()
    try:
        return await asyncio.to_thread(work, cancelled)
    except asyncio.CancelledError:
        cancelled.set()
        raise
