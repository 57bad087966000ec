"""server/capabilities/started_streams.py: a stream's generator started before the response,
run in one task from start to end, and stopped however its reader leaves."""

from __future__ import annotations

import asyncio
import contextvars
import gc
from collections.abc import AsyncGenerator

import pytest

from server.capabilities.started_streams import READY, started_stream

current = contextvars.ContextVar[str]("current", default="")


class Work:
    """A generator that holds a context variable (as a span or a lease holds its token) while it runs."""

    def __init__(self, items: list[bytes], *, fail_at: int | None = None, endless: bool = False) -> None:
        self.items = items
        self.fail_at = fail_at
        self.endless = endless
        self.ended = asyncio.Event()
        self.reset_error: BaseException | None = None

    async def events(self) -> AsyncGenerator[bytes, None]:
        token = current.set("held")
        try:
            for index, item in enumerate(self.items):
                if index == self.fail_at:
                    raise RuntimeError("refused")
                yield item
            while self.endless:
                await asyncio.sleep(0.01)
                yield b"more"
        finally:
            try:
                current.reset(token)  # raises if left in another context than it was entered in
            except ValueError as exc:
                self.reset_error = exc
            self.ended.set()


async def test_what_the_generator_raises_before_its_first_item_is_raised_at_start() -> None:
    work = Work([b"a"], fail_at=0)
    with pytest.raises(RuntimeError, match="refused"):
        await started_stream(work.events())
    assert work.ended.is_set() and work.reset_error is None


async def test_ready_is_not_relayed_and_a_reader_in_another_task_leaves_the_context_intact() -> None:
    work = Work([READY, b"a", b"b"])
    relay = await started_stream(work.events())

    async def read() -> list[bytes]:
        return [item async for item in relay]

    assert await asyncio.wait_for(asyncio.create_task(read()), 10) == [b"a", b"b"]
    assert work.ended.is_set() and work.reset_error is None


async def test_an_error_after_the_start_reaches_the_reader() -> None:
    work = Work([b"a", b"b"], fail_at=1)
    relay = await started_stream(work.events())
    assert await anext(relay) == b"a"
    with pytest.raises(RuntimeError, match="refused"):
        await anext(relay)


async def test_a_reader_that_closes_the_stream_stops_the_work() -> None:
    work = Work([b"a"], endless=True)
    relay = await started_stream(work.events())
    assert await anext(relay) == b"a"
    await relay.aclose()  # type: ignore[attr-defined]
    await asyncio.wait_for(work.ended.wait(), 10)
    assert work.reset_error is None


async def test_a_stream_dropped_unread_stops_the_work() -> None:
    work = Work([b"a"], endless=True)
    relay = await started_stream(work.events())
    del relay
    gc.collect()
    await asyncio.wait_for(work.ended.wait(), 10)
    assert work.reset_error is None


async def test_a_start_that_is_cancelled_stops_the_work() -> None:
    started = asyncio.Event()

    async def slow() -> AsyncGenerator[bytes, None]:
        started.set()
        try:
            await asyncio.sleep(60)
            yield b"never"
        finally:
            ended.set()

    ended = asyncio.Event()
    starting = asyncio.create_task(started_stream(slow()))
    await asyncio.wait_for(started.wait(), 10)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    await asyncio.wait_for(ended.wait(), 10)
