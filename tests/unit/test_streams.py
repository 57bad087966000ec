from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from server.capabilities.text.sampling import merge_streams


async def numbers(start: int, count: int, delay: float) -> AsyncIterator[int]:
    for value in range(start, start + count):
        await asyncio.sleep(delay)
        yield value


async def test_merge_interleaves_and_tags_sources() -> None:
    merged = [item async for item in merge_streams([numbers(0, 3, 0.001), numbers(10, 2, 0.0015)])]
    assert sorted(merged) == [(0, 0), (0, 1), (0, 2), (1, 10), (1, 11)]


async def test_merge_propagates_errors_and_cancels_the_rest() -> None:
    cancelled = asyncio.Event()

    async def slow() -> AsyncIterator[int]:
        try:
            await asyncio.sleep(10)
            yield 1
        finally:
            cancelled.set()

    async def broken() -> AsyncIterator[int]:
        raise ValueError("boom")
        yield 0  # pragma: no cover

    with pytest.raises(ValueError, match="boom"):
        async for _ in merge_streams([slow(), broken()]):
            pass
    assert cancelled.is_set()
