"""Chat with a reasoning parser, on a scripted fake engine and vLLM's real deepseek_r1
parser: reasoning is answered apart, and a tool-call parser reads only what follows it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from engines.admission import AdmissionPolicy
from engines.base import GenerationStep, ModelKind, ModelSpec, SamplingOptions, SequenceDelta
from engines.llm.reasoning import ReasoningParser
from engines.registry import ModelRegistry
from engines.scheduler import Scheduler
from schemas.openai.chat import ChatCompletionRequest
from server.capabilities.text import TextCapability
from server.settings import Limits
from tests.fakes import FakeTextEngine

# Token ids of the pieces the fake engine emits, one piece per step.
VOCAB = {"<think>": 1, "</think>": 2}
SCRIPT = [("<think>", [1]), ("weigh", [10]), (" it", [11]), ("</think>", [2]), ("CALL:lookup", [12])]


class Tokenizer:
    def get_vocab(self) -> dict[str, int]:
        return VOCAB


class CallSession:
    """A stand-in tool-call parser: "CALL:name" is a call. Records what it was shown."""

    skip_special_tokens = True

    def __init__(self) -> None:
        self.seen: list[str] = []

    def extract(self, text: str) -> tuple[str | None, list[tuple[str, str]]]:
        self.seen.append(text)
        if text.startswith("CALL:"):
            return None, [(text.removeprefix("CALL:"), "{}")]
        return text, []

    def extract_delta(self, text: str, ids: list[int]) -> dict[str, Any] | None:
        self.seen.append(text)
        if text.startswith("CALL:"):
            call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": text[5:], "arguments": "{}"}}
            return {"tool_calls": [call]}
        return {"content": text}


class CallParser:
    def __init__(self) -> None:
        self.sessions: list[CallSession] = []

    def start(self, request: dict[str, Any]) -> CallSession:
        self.sessions.append(CallSession())
        return self.sessions[-1]


class ThinkingEngine(FakeTextEngine):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.calls = CallParser()

    def reasoning_parser(self) -> Any | None:
        return ReasoningParser("deepseek_r1", Tokenizer())

    def tool_parser(self) -> Any | None:
        return self.calls

    async def generate(
        self, prompt_token_ids: list[int], options: SamplingOptions, request_id: str, *, media: Any = None
    ) -> AsyncIterator[GenerationStep]:
        for position, (text, ids) in enumerate(SCRIPT):
            reason = "stop" if position == len(SCRIPT) - 1 else None
            delta = SequenceDelta(index=0, text=text, token_ids=ids, finish_reason=reason)
            yield GenerationStep(prompt_tokens=len(prompt_token_ids), sequences=[delta])


def service() -> tuple[TextCapability, ThinkingEngine]:
    spec = ModelSpec(name="thinker", kind=ModelKind.CHAT, engine="fake", path="/x", reasoning_parser="deepseek_r1")
    engines: list[ThinkingEngine] = []

    def build(spec: ModelSpec) -> Any:
        engines.append(ThinkingEngine(spec))
        return engines[-1]

    scheduler = Scheduler(ModelRegistry([spec], {"fake": build}), AdmissionPolicy())
    return TextCapability(scheduler, Limits()), engines[0]


def request(**fields: Any) -> ChatCompletionRequest:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    body = {"model": "thinker", "messages": [{"role": "user", "content": "hi"}], "tools": tools, **fields}
    return msgspec.convert(body, ChatCompletionRequest)


async def test_reasoning_comes_apart_and_the_tool_parser_reads_only_the_answer() -> None:
    text, engine = service()
    result = await text.chat.create(request())
    choice = result.choices[0]
    assert choice.message.reasoning_content == "weigh it"
    assert choice.message.content is None
    assert [call.function.name for call in choice.message.tool_calls or []] == ["lookup"]
    assert choice.finish_reason == "tool_calls"
    assert engine.calls.sessions[-1].seen == ["CALL:lookup"]


async def test_streamed_reasoning_deltas_then_tool_call_deltas() -> None:
    text, engine = service()
    deltas = []
    async for event in await text.chat.stream(request(stream=True)):
        data = event.decode().removeprefix("data: ").strip()
        if data and data != "[DONE]":
            deltas.extend((choice["delta"], choice["finish_reason"]) for choice in json.loads(data)["choices"])
    reasoning = "".join(delta.get("reasoning_content") or "" for delta, _ in deltas)
    assert reasoning == "weigh it"
    assert not any(delta.get("content") for delta, _ in deltas)
    calls = [call for delta, _ in deltas for call in delta.get("tool_calls") or []]
    assert [call["function"]["name"] for call in calls] == ["lookup"]
    assert deltas[-1][1] == "tool_calls"
    assert engine.calls.sessions[-1].seen == ["CALL:lookup"]


async def test_without_tools_the_answer_is_content() -> None:
    text, _ = service()
    result = await text.chat.create(request(tools=None))
    assert result.choices[0].message.reasoning_content == "weigh it"
    assert result.choices[0].message.content == "CALL:lookup"


def test_a_body_vllms_request_model_refuses_still_gets_its_reasoning_split() -> None:
    body = {"model": "thinker", "messages": [{"role": "user", "content": [{"type": "odd"}]}], "n": "many"}
    session = ReasoningParser("deepseek_r1", Tokenizer()).start(body, [5, 6])
    assert session.extract("<think>hm</think>yes") == ("hm", "yes")


def test_a_tokenizer_without_the_parsers_markers_fails_the_check() -> None:
    class Plain:
        def get_vocab(self) -> dict[str, int]:
            return {"a": 1}

    ReasoningParser("deepseek_r1", Tokenizer()).check()
    with pytest.raises(RuntimeError, match="think"):
        ReasoningParser("deepseek_r1", Plain()).check()
