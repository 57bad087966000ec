"""A client that goes away cancels its engine work, on every kind of route: the one
cancellation mechanism (server/cancellation.py) under a real HTTP server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engines.base import ImageGeneration, ImageResult, ModelKind, ModelSpec, ProgressCallback
from server.composition import Components
from tests.fakes import FakeImageEngine, FakeTextEngine, fake_factory
from tests.unit.serving import serve


class SlowImageEngine(FakeImageEngine):
    """Draws for a long time, and says whether it was stopped."""

    def __init__(self, spec: ModelSpec, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def generate(self, job: ImageGeneration, progress: ProgressCallback | None = None) -> ImageResult:
        self.started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return await super().generate(job, progress)


def factory(spec: ModelSpec) -> Any:
    if spec.kind is ModelKind.IMAGE:
        return SlowImageEngine(spec)
    return fake_factory(spec)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, Components]]:
    async with serve(tmp_path, factory=factory) as running:
        yield running


async def _leave_after(url: str, path: str, body: dict[str, Any], started: asyncio.Event) -> None:
    """Send the request, and close the connection once the engine has started on it."""
    async with httpx.AsyncClient() as client:
        request = asyncio.create_task(client.post(url + path, json=body, timeout=60))
        await asyncio.wait_for(started.wait(), 10)
        request.cancel()
        await asyncio.gather(request, return_exceptions=True)


async def _leases(state: Components, model: str) -> int:
    return state.scheduler.report().models[model].leases


async def test_an_image_request_whose_client_leaves_stops_drawing(served: tuple[str, Components]) -> None:
    url, state = served
    engine = state.scheduler.engine("fake-sd")
    assert isinstance(engine, SlowImageEngine)
    await _leave_after(url, "/v1/images/generations", {"model": "fake-sd", "prompt": "a cat"}, engine.started)
    await asyncio.wait_for(engine.cancelled.wait(), 10)
    async with asyncio.timeout(10):
        while await _leases(state, "fake-sd"):
            await asyncio.sleep(0.02)


async def test_a_chat_whose_client_leaves_is_aborted_in_the_engine(served: tuple[str, Components]) -> None:
    url, state = served
    engine = state.scheduler.engine("fake-chat")
    assert isinstance(engine, FakeTextEngine)
    engine.step_delay = 0.05
    started = asyncio.Event()
    original = engine.generate

    def generate(*args: Any, **kwargs: Any) -> Any:
        started.set()
        return original(*args, **kwargs)

    engine.generate = generate  # type: ignore[method-assign]
    body = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40}
    await _leave_after(url, "/v1/chat/completions", body, started)
    async with asyncio.timeout(10):
        while not engine.aborted:
            await asyncio.sleep(0.02)
    async with asyncio.timeout(10):
        while await _leases(state, "fake-chat"):
            await asyncio.sleep(0.02)
