"""Run a request's work until it finishes or its client goes away, whichever is first."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from litestar import Request

T = TypeVar("T")


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it (engines abort on cancel).

    The body has been read by the time a handler runs, so the next ASGI message is the
    disconnect, if it ever comes.
    """
    work_task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((work_task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not work_task.done():
        work_task.cancel()
        await asyncio.gather(work_task, return_exceptions=True)
        raise asyncio.CancelledError("client disconnected")
    return work_task.result()
