"""Each class of blocking work runs on its own bounded pool."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from engines import workpools
from engines.workpools import WorkPool, run_in

REQUEST = contextvars.ContextVar("REQUEST", default="none")


async def test_a_full_pool_does_not_delay_another_class() -> None:
    release = threading.Event()
    size = workpools.executor(WorkPool.STORAGE)._max_workers
    stuck = [asyncio.ensure_future(run_in(WorkPool.STORAGE, release.wait, 5)) for _ in range(size + 2)]
    try:
        # Every storage thread is blocked, yet engine work runs at once.
        assert await asyncio.wait_for(run_in(WorkPool.ENGINE, lambda: threading.current_thread().name), 2)
        name = await asyncio.wait_for(run_in(WorkPool.MEDIA, lambda: threading.current_thread().name), 2)
        assert "media" in name
        assert not any(task.done() for task in stuck)
    finally:
        release.set()
        await asyncio.gather(*stuck)


async def test_context_variables_follow_the_work() -> None:
    REQUEST.set("req-1")
    assert await run_in(WorkPool.NETWORK, REQUEST.get) == "req-1"


def test_pool_sizes_must_be_positive() -> None:
    with pytest.raises(ValueError):
        workpools.configure({WorkPool.MEDIA: 0})
