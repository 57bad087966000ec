"""Chat and completions under load: streams are admitted before their 200, and a request's
sequences (prompts x n) are capped and count against the model's concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from engines.admission import AdmissionPolicy
from engines.registry import ModelRegistry
from engines.scheduler import Scheduler
from schemas.errors import ApiError, ErrorCode
from schemas.openai.chat import ChatCompletionRequest
from schemas.openai.completions import CompletionRequest
from server.capabilities.text import TextCapability
from server.composition import Components
from server.settings import Limits
from tests.fakes import FAKE_SPECS, FakeTextEngine, fake_factory
from tests.unit.serving import serve

CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
COMPLETION = {"model": "fake-chat", "prompt": "hi", "max_tokens": 3}
ROUTES = [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)]


@asynccontextmanager
async def served_app(tmp_path: Path, **limits: object) -> AsyncIterator[tuple[str, Scheduler, httpx.AsyncClient]]:
    async with serve(tmp_path, limits=limits) as (url, state), httpx.AsyncClient(base_url=url, timeout=30) as http:
        yield url, state.scheduler, http


class ModelFull:
    """Holds every slot of fake-chat for the block."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.release = asyncio.Event()
        self.holding = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def _hold(self) -> None:
        async with self.scheduler.lease("fake-chat", weight=self.scheduler.policy.max_concurrency):
            self.holding.set()
            await self.release.wait()

    async def __aenter__(self) -> ModelFull:
        self.task = asyncio.create_task(self._hold())
        await asyncio.wait_for(self.holding.wait(), 5)
        return self

    async def __aexit__(self, *_: object) -> None:
        self.release.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)


async def settled(scheduler: Scheduler) -> None:
    """Wait until fake-chat has no lease and no waiter (a response is released just after its last byte)."""
    async with asyncio.timeout(5):
        while scheduler.queue_state()["fake-chat"] != (0, 0):
            await asyncio.sleep(0.01)


def plain_refusal(response: httpx.Response, code: str, status: int) -> None:
    """An ordinary JSON error response with Retry-After, not a 200 event stream."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert int(response.headers["Retry-After"]) >= 1
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize(("path", "body"), ROUTES)
async def test_a_stream_that_waits_too_long_for_the_model_is_a_503(
    tmp_path: Path, path: str, body: dict[str, Any]
) -> None:
    async with served_app(tmp_path, queue_timeout_s=0.2) as (_, scheduler, http):
        async with ModelFull(scheduler):
            response = await http.post(path, json={**body, "stream": True})
            plain_refusal(response, "SERVICE_NOT_AVAILABLE", 503)
        await settled(scheduler)
        # Once the model has room, the same stream goes through.
        response = await http.post(path, json={**body, "stream": True})
        assert response.status_code == 200 and response.text.endswith("data: [DONE]\n\n")
        await settled(scheduler)


@pytest.mark.parametrize(("path", "body"), ROUTES)
async def test_a_stream_to_a_full_queue_is_a_429(tmp_path: Path, path: str, body: dict[str, Any]) -> None:
    async with served_app(tmp_path, max_queue_depth=0) as (_, scheduler, http), ModelFull(scheduler):
        response = await http.post(path, json={**body, "stream": True})
        plain_refusal(response, "QUEUE_FULL", 429)


async def test_a_burst_past_the_running_and_queue_bounds_is_answered_429(tmp_path: Path) -> None:
    """limits.max_running_per_model streams run, max_queue_depth wait for their 200, and every
    stream of the burst past both is refused at once with Retry-After."""
    async with served_app(tmp_path, max_running_per_model=2, max_queue_depth=1) as (_, scheduler, http):
        assert scheduler.policy.max_concurrency == 2
        async with ModelFull(scheduler) as full:  # the two running streams
            queued = asyncio.create_task(http.post("/v1/chat/completions", json={**CHAT, "stream": True}))
            async with asyncio.timeout(5):
                while scheduler.queue_state()["fake-chat"][0] < 1:
                    await asyncio.sleep(0.01)
            burst = [http.post("/v1/chat/completions", json={**CHAT, "stream": True}) for _ in range(3)]
            for response in await asyncio.gather(*burst):
                plain_refusal(response, "QUEUE_FULL", 429)
            assert not queued.done()
            full.release.set()
        response = await asyncio.wait_for(queued, 5)
        assert response.status_code == 200 and response.text.endswith("data: [DONE]\n\n")
        await settled(scheduler)


async def test_a_stream_waits_for_its_turn_before_its_200(tmp_path: Path) -> None:
    async with served_app(tmp_path) as (_, scheduler, http):
        async with ModelFull(scheduler) as full:
            request = asyncio.create_task(http.post("/v1/chat/completions", json={**CHAT, "stream": True}))
            async with asyncio.timeout(5):
                while scheduler.queue_state()["fake-chat"][0] < 1:  # queued, nothing sent yet
                    await asyncio.sleep(0.01)
            assert not request.done()
            full.release.set()
        response = await asyncio.wait_for(request, 5)
        assert response.status_code == 200
        assert '"content":"a"' in response.text


async def test_a_stream_whose_client_leaves_gives_its_slots_back(tmp_path: Path) -> None:
    async with serve(tmp_path) as (url, state):
        await leave_a_stream(url, state)


async def leave_a_stream(url: str, state: Components) -> None:
    engine = state.scheduler.engine("fake-chat")
    assert isinstance(engine, FakeTextEngine)
    engine.step_delay = 0.05
    body = {**CHAT, "max_tokens": 40, "n": 3, "stream": True}
    async with httpx.AsyncClient(timeout=10) as http, http.stream("POST", url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        async for _ in r.aiter_bytes():
            break
        assert state.scheduler.queue_state()["fake-chat"] == (0, 1)
    async with asyncio.timeout(10):
        while not engine.aborted or state.scheduler.queue_state()["fake-chat"] != (0, 0):
            await asyncio.sleep(0.02)
    # All three slots are free again: a request taking every slot is admitted at once.
    async with asyncio.timeout(1), state.scheduler.lease("fake-chat", weight=state.scheduler.policy.max_concurrency):
        pass


# -- sequences per request --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompts", "n", "param"),
    [(2048, 16, "prompt"), (20, 16, "n"), (300, 1, "prompt")],
)
async def test_completion_fan_out_is_capped(client: AsyncTestClient, prompts: int, n: int, param: str) -> None:
    body = {"model": "fake-chat", "prompt": ["hi"] * prompts, "n": n, "max_tokens": 1}
    response = await client.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == "INVALID_REQUEST_BODY"
    assert f"{prompts * n} sequences" in error["message"]


async def test_a_configured_cap_applies_to_chat_too(tmp_path: Path) -> None:
    async with served_app(tmp_path, max_sequences_per_request=4) as (_, _, client):
        response = await client.post("/v1/chat/completions", json={**CHAT, "n": 5})
        assert response.status_code == 400 and response.json()["error"]["param"] == "n"
        response = await client.post("/v1/completions", json={**COMPLETION, "prompt": ["a", "b"], "n": 2})
        assert response.status_code == 200 and len(response.json()["choices"]) == 4


async def test_sequences_count_against_the_models_concurrency() -> None:
    policy = AdmissionPolicy(max_concurrency=8, queue_timeout_s=0.2)
    scheduler = Scheduler(ModelRegistry(FAKE_SPECS, {"fake": fake_factory}), policy)
    text = TextCapability(scheduler, Limits())
    engine = await scheduler.resident_engine("fake-chat")
    assert isinstance(engine, FakeTextEngine)
    engine.step_delay = 0.05
    wide = msgspec.convert({**COMPLETION, "prompt": ["a", "b"], "n": 4, "max_tokens": 20}, CompletionRequest)
    running = asyncio.create_task(text.completions.create(wide))  # 2 prompts x 4: all eight slots
    async with asyncio.timeout(5):
        while scheduler.queue_state()["fake-chat"] != (0, 1):
            await asyncio.sleep(0.01)
    with pytest.raises(ApiError) as busy:
        await text.chat.create(msgspec.convert(CHAT, ChatCompletionRequest))
    assert busy.value.code is ErrorCode.SERVICE_NOT_AVAILABLE
    assert len((await asyncio.wait_for(running, 10)).choices) == 8
    assert len((await text.chat.create(msgspec.convert(CHAT, ChatCompletionRequest))).choices) == 1
