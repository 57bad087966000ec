"""Chat templates through the app: a client's template is refused unless allowed, template
variables pass, and rendering (the real transformers path) never holds the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from engines.base import ModelKind, ModelSpec
from engines.llm.generate import VllmTextEngine
from server.composition import Components
from tests.fakes import FakeTextEngine, fake_factory
from tests.unit.serving import serve

T = TypeVar("T")
CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
# The review's bomb: unbounded work for whoever renders it.
BOMB = "{% for a in range(100000) %}{% for b in range(100000) %}{{ 'x' * 1000 }}{% endfor %}{% endfor %}"
# Slow but finite (a few seconds): the test process must not keep a thread spinning forever.
SLOW = "{% for a in range(100000) %}{% for b in range(40) %}{{ b }}{% endfor %}{% endfor %}"
SERVER_TEMPLATE = "{% for m in messages %}{{ m.role }} {{ m.content }} {% endfor %}"


def real_tokenizer() -> Any:
    """A transformers tokenizer with a chat template: apply_chat_template as vLLM's engine
    calls it (transformers' sandboxed Jinja)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "user": 1, "hi": 2, "CUSTOM": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", chat_template=SERVER_TEMPLATE)


class TemplateTextEngine(FakeTextEngine):
    """The fake engine, rendering chats with the vLLM engine's own render_chat and a real tokenizer."""

    def __init__(self, spec: ModelSpec, **kwargs: Any) -> None:
        super().__init__(spec, max_model_len=100_000, **kwargs)
        self.renderer = VllmTextEngine(spec)
        self.renderer._tokenizer = real_tokenizer()
        self.template_kwargs: list[dict[str, Any] | None] = []

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        template_kwargs: dict[str, Any] | None = None,
    ) -> list[int]:
        self.template_kwargs.append(template_kwargs)
        return self.renderer.render_chat(
            messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            template_kwargs=template_kwargs,
        )


def factory(spec: ModelSpec) -> Any:
    return TemplateTextEngine(spec) if spec.kind is ModelKind.CHAT else fake_factory(spec)


class App:
    """The served app and an HTTP client for it."""

    def __init__(self, url: str, state: Components, http: httpx.AsyncClient) -> None:
        self.url, self.state, self.http = url, state, http

    async def chat(self, **fields: Any) -> httpx.Response:
        return await self.http.post(self.url + "/v1/chat/completions", json={**CHAT, **fields})

    @property
    def engine(self) -> TemplateTextEngine:
        engine = self.state.scheduler.engine("fake-chat")
        assert isinstance(engine, TemplateTextEngine)
        return engine


@asynccontextmanager
async def app(tmp_path: Path, **limits: object) -> AsyncIterator[App]:
    async with serve(tmp_path, factory=factory, limits=limits) as (url, state), httpx.AsyncClient(timeout=30) as http:
        yield App(url, state, http)


@pytest.fixture
async def strict(tmp_path: Path) -> AsyncIterator[App]:
    async with app(tmp_path) as made:
        yield made


@pytest.fixture
async def trusting(tmp_path: Path) -> AsyncIterator[App]:
    """Client templates allowed, a short render limit, one client render at a time."""
    async with app(
        tmp_path, allow_client_chat_templates=True, chat_template_timeout_s=0.3, max_client_template_renders=1
    ) as made:
        yield made


async def with_loop_lag(work: Awaitable[T]) -> tuple[T, float]:
    """``work``'s result, and the longest the event loop (the app's too) was held meanwhile."""
    worst = 0.0
    done = asyncio.Event()

    async def tick() -> None:
        nonlocal worst
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.005)
            worst = max(worst, time.perf_counter() - started - 0.005)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)  # ticking before the work starts
    try:
        return await work, worst
    finally:
        done.set()
        await ticker


def refused(response: httpx.Response, param: str) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["param"] == param
    return error


async def test_a_clients_template_is_refused_at_once(strict: App) -> None:
    started = time.perf_counter()
    in_kwargs, lag = await with_loop_lag(strict.chat(chat_template_kwargs={"chat_template": BOMB}))
    error = refused(in_kwargs, "chat_template_kwargs.chat_template")
    assert error["code"] == "INVALID_REQUEST_BODY"
    refused(await strict.chat(chat_template=BOMB, stream=True), "chat_template")
    assert time.perf_counter() - started < 1.0 and lag < 0.25
    assert strict.engine.template_kwargs == []  # nothing was rendered


@pytest.mark.parametrize(
    "key", ["tokenize", "tools", "documents", "add_generation_prompt", "continue_final_message", "jinja_env", "x-y"]
)
async def test_rendering_controls_are_refused_by_name(strict: App, key: str) -> None:
    refused(await strict.chat(chat_template_kwargs={key: True}), f"chat_template_kwargs.{key}")


async def test_template_variables_reach_the_template(strict: App) -> None:
    kwargs = {"enable_thinking": False, "reasoning_effort": "low"}
    response = await strict.chat(chat_template_kwargs=kwargs)
    assert response.status_code == 200, response.text
    assert strict.engine.template_kwargs == [kwargs]
    assert response.json()["usage"]["prompt_tokens"] == 2  # "user hi", the server's template


async def test_an_allowed_client_template_is_used(trusting: App) -> None:
    response = await trusting.chat(chat_template="CUSTOM {% for m in messages %}{{ m.content }} {% endfor %}")
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == 2  # "CUSTOM hi"
    response = await trusting.chat(chat_template_kwargs={"chat_template": "CUSTOM CUSTOM CUSTOM"})
    assert response.json()["usage"]["prompt_tokens"] == 3


async def test_a_slow_template_times_out_without_holding_the_loop(trusting: App) -> None:
    started = time.perf_counter()
    response, lag = await with_loop_lag(trusting.chat(chat_template=SLOW))
    answered_s = time.perf_counter() - started
    error = refused(response, "chat_template")
    assert "within 0.3 s" in error["message"]
    health, health_lag = await with_loop_lag(trusting.http.get(trusting.url + "/health"))
    assert health.status_code == 200

    # The abandoned render still runs: another client template waits for its turn (503).
    busy = await trusting.chat(chat_template="CUSTOM")
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "SERVICE_NOT_AVAILABLE"
    assert busy.headers["Retry-After"]
    # The server's own template is never held back by them.
    assert (await trusting.chat()).status_code == 200
    async with asyncio.timeout(60):
        while (await trusting.chat(chat_template="CUSTOM")).status_code != 200:
            await asyncio.sleep(0.2)
    render_s = time.perf_counter() - started
    # Compared with the render itself, not with a fixed figure, so a loaded machine cannot
    # fail it: the answer came at the deadline, long before the render ended, and the loop
    # was never held for more than a small part of it.
    assert answered_s < render_s / 2, (answered_s, render_s)
    assert max(lag, health_lag) < render_s / 4, (
        f"the event loop was held {max(lag, health_lag):.2f} s of {render_s:.2f} s"
    )
