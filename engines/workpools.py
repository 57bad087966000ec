"""Bounded thread pools, one per class of blocking work.

asyncio's default executor is one shared pool: a slow S3 endpoint or a burst of image
decodes could take every thread and leave inference waiting behind them. Each class here
has its own pool, so one class backing up only delays its own kind of work.

Work submitted through ``run_in`` keeps the caller's context variables (the active span,
the request id), as ``asyncio.to_thread`` does.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import functools
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class WorkPool(enum.Enum):
    # Model loads and inference steps; the scheduler already bounds how many run at once.
    ENGINE = "engine"
    # Decoding and encoding media (images, audio, video): CPU-heavy, sized near the core count.
    MEDIA = "media"
    # DNS lookups for outbound URLs.
    NETWORK = "network"
    # Writes to local disk and uploads to object storage.
    STORAGE = "storage"


DEFAULT_SIZES: Mapping[WorkPool, int] = {
    WorkPool.ENGINE: 32,
    WorkPool.MEDIA: 4,
    WorkPool.NETWORK: 8,
    WorkPool.STORAGE: 8,
}

_sizes: dict[WorkPool, int] = dict(DEFAULT_SIZES)
_executors: dict[WorkPool, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def configure(sizes: Mapping[WorkPool, int]) -> None:
    """Set pool sizes; takes effect for pools not yet started (call it before serving)."""
    for pool, size in sizes.items():
        if size < 1:
            raise ValueError(f"the {pool.value} pool needs at least one thread")
        _sizes[pool] = size


def executor(pool: WorkPool) -> ThreadPoolExecutor:
    with _lock:
        found = _executors.get(pool)
        if found is None:
            found = ThreadPoolExecutor(_sizes[pool], thread_name_prefix=f"omniserve-{pool.value}")
            _executors[pool] = found
        return found


async def run_in(pool: WorkPool, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``function(*args, **kwargs)`` on ``pool``'s threads, awaited from the event loop."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    call = functools.partial(context.run, function, *args, **kwargs)
    return await loop.run_in_executor(executor(pool), call)


def shutdown() -> None:
    """Stop every started pool without waiting for running work (process exit)."""
    with _lock:
        for found in _executors.values():
            found.shutdown(wait=False, cancel_futures=True)
        _executors.clear()
