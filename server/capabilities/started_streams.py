"""A streamed response whose work is admitted before its status is sent.

A stream's status goes out with its first byte, so everything that can refuse the request (a
full queue, a busy model, a damaged upload) must be met before then: otherwise overload reaches
the client as an error event after a 200, without Retry-After. `started_stream` runs the
capability's event generator until its first item, so the lease and what precedes it are
taken while the handler can still answer with an error status, and hands the rest over to the
response.

The generator advances only when the response asks for its next item, so nothing is made (or
charged) that the client was not about to receive: a metered stream cut by the client pays for
what was sent. A capability that wants work done ahead (speech speaks the next sentence while
the last is encoded) does that inside its own generator.

The generator runs from start to end in a task of its own. Its context managers (the lease, the
span and its OpenTelemetry context, the charge) are entered and left in that one task, though
the response iterates in another (Litestar streams from a task group). Leaving early reaches it
too: the response closing its iterator (a client that left) cancels the task and waits for it
to unwind, so the lease and the charge are settled when the response ends; dropping it unread
cancels the task as well.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

# A generator that has nothing to send yet sends this once it holds what it needs (its lease);
# it is not relayed.
READY = b""

_END = object()
_running: set[asyncio.Task[None]] = set()  # the event loop keeps only weak references to tasks


def _forget(task: asyncio.Task[None]) -> None:
    _running.discard(task)
    if not task.cancelled():
        # Retrieved here as well: after the response has left there is nobody to raise it to.
        task.exception()


async def _pump(events: AsyncGenerator[bytes, None], queue: asyncio.Queue[bytes], wanted: asyncio.Semaphore) -> None:
    async with aclosing(events):
        async for item in events:
            await queue.put(item)
            await wanted.acquire()  # the next item only once the reader asks for it


async def _next(queue: asyncio.Queue[bytes], task: asyncio.Task[None]) -> object:
    """The next item, _END once the generator has finished, or the exception it raised."""
    if queue.empty() and not task.done():
        getter = asyncio.ensure_future(queue.get())
        try:
            await asyncio.wait([getter, task], return_when=asyncio.FIRST_COMPLETED)
        finally:
            getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
    if not queue.empty():
        return queue.get_nowait()
    task.result()  # raises what the generator raised
    return _END


async def _relay(
    first: object, queue: asyncio.Queue[bytes], wanted: asyncio.Semaphore, task: asyncio.Task[None]
) -> AsyncGenerator[bytes, None]:
    try:
        item = first
        while item is not _END:
            if isinstance(item, bytes) and item:
                yield item
            wanted.release()
            item = await _next(queue, task)
    finally:
        task.cancel()  # nothing once the generator has finished; otherwise it unwinds
        while not task.done():
            try:
                await asyncio.wait([task])
            except asyncio.CancelledError:
                continue  # cancelled again: the lease and the charge still have to be settled


async def started_stream(events: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    """``events`` started: its first item is awaited here, so what it raises before that is
    raised here (a plain error response). The rest comes from the iterator returned."""
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1)
    wanted = asyncio.Semaphore(0)
    task = asyncio.create_task(_pump(events, queue, wanted))
    _running.add(task)
    task.add_done_callback(_forget)
    try:
        first = await _next(queue, task)
    except BaseException:
        task.cancel()
        raise
    relay = _relay(first, queue, wanted, task)
    # A response that never starts its iterator cannot close it: collecting it ends the work.
    weakref.finalize(relay, task.cancel)
    return relay
