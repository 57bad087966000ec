"""Blocking engine work on a worker thread, stoppable from the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

from engines.workpools import WorkPool, run_in

T = TypeVar("T")


async def run_cancellable(work: Callable[[threading.Event], T]) -> T:
    """`work(cancelled)` on a worker thread. A thread cannot be interrupted: when the awaiting
    task is cancelled, `cancelled` is set, and the work stops at its next check of it (the
    next denoising step, tile or segment).

    The cancellation waits for that: the caller's lease, and with it the device turn of a
    device-serial engine (the only guard of its device and of the engine's own state), must
    not end while the thread still computes, or the next job would run beside it."""
    cancelled = threading.Event()
    running = asyncio.ensure_future(run_in(WorkPool.ENGINE, work, cancelled))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        cancelled.set()
        while not running.done():
            try:
                await asyncio.wait([running])
            except asyncio.CancelledError:
                continue  # cancelled again: the thread still has to stop first
        if not running.cancelled():
            running.exception()  # whatever it ended with, the caller wanted no result
        raise
