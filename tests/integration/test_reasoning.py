"""Reasoning split by vLLM's deepseek_r1 parser, on the real engine: a tiny random model
whose output is forced into ``<think>…</think>answer`` by a regex."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, cast

import msgspec
import pytest

from engines.admission import AdmissionPolicy
from engines.base import TextGenerationEngine
from engines.registry import ModelRegistry, vllm_factory
from engines.scheduler import Scheduler
from schemas.openai.chat import ChatCompletionRequest
from server.capabilities.text import TextCapability
from server.capabilities.text.templates import template_input
from server.settings import Limits
from tests.thinking_model import build_thinking_model, thinking_spec

pytestmark = pytest.mark.integration

SHAPE = "<think>[a-z ]{1,20}</think>[a-z ]{1,20}"
MESSAGES = [{"role": "user", "content": "think about the river"}]


@pytest.fixture(scope="module")
async def services(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TextCapability]:
    path = tmp_path_factory.mktemp("thinker")
    build_thinking_model(path)
    registry = ModelRegistry([thinking_spec(path)], {"vllm": vllm_factory(cpu_threads=0)})
    scheduler = Scheduler(registry, AdmissionPolicy())
    await scheduler.load_all()
    yield TextCapability(scheduler, Limits())
    await scheduler.unload_all()


def chat_request(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "thinker", "messages": MESSAGES, "max_tokens": 60, "temperature": 0, "guided_regex": SHAPE}
    return msgspec.convert({**body, **fields}, ChatCompletionRequest)


async def raw_text(services: TextCapability, request: ChatCompletionRequest) -> str:
    """The model's own output for the request, before any parser."""
    engine = cast(TextGenerationEngine, services.chat.scheduler.engine("thinker"))
    plan = await services.chat._plan(request, engine, template_input(request, services.chat.limits))
    text = ""
    async for step in engine.generate(plan.prompt_ids, plan.options, "raw-" + plan.request_id):
        text += step.sequences[0].text
    return text


async def test_reasoning_is_answered_apart_from_content(services: TextCapability) -> None:
    request = chat_request()
    result = await services.chat.create(request)
    message = result.choices[0].message
    raw = await raw_text(services, request)
    assert raw.startswith("<think>") and "</think>" in raw, raw
    assert isinstance(message.reasoning_content, str) and message.reasoning_content
    assert message.content
    # Nothing lost, nothing duplicated: the two parts and the markers are the whole output.
    assert f"<think>{message.reasoning_content}</think>{message.content}" == raw
    assert "think>" not in message.content
    assert json.loads(msgspec.json.encode(result))["choices"][0]["message"]["reasoning_content"] == (
        message.reasoning_content
    )


async def test_streamed_deltas_split_the_same_way(services: TextCapability) -> None:
    whole = (await services.chat.create(chat_request())).choices[0].message
    stream = await services.chat.stream(chat_request(stream=True))
    reasoning, content = "", ""
    async for event in stream:
        data = event.decode().removeprefix("data: ").strip()
        if not data or data == "[DONE]":
            continue
        for choice in json.loads(data)["choices"]:
            delta = choice["delta"]
            reasoning += delta.get("reasoning_content") or ""
            content += delta.get("content") or ""
    assert reasoning == whole.reasoning_content
    assert content == whole.content
    assert "think>" not in content and "think>" not in reasoning
