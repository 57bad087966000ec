"""Anthropic's Messages API on fake chat engines: translation, shapes, streams, errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from engines.base import GenerationStep, ModelKind, ModelSpec, SamplingOptions, SequenceDelta
from engines.errors import EngineFailure
from schemas.anthropic.messages import MessagesRequest
from schemas.errors import ApiError, ErrorCode
from server.app import build_components, create_app
from server.errors import anthropic_error_body, error_family
from server.routes.anthropic.translation import chat_request
from server.settings import Settings
from tests.fakes import FakeEmbeddingEngine, FakeTextEngine
from tests.tracing import FORWARD, PROVIDER
from tests.unit.serving import serve

REPLY = "Hello there. STOP now."
CALL = {"city": "Paris"}
KEY = "sk-anthropic-test"
MODEL = "scripted-chat"
SPECS = [
    ModelSpec(name=MODEL, kind=ModelKind.CHAT, engine="fake", path="-"),
    ModelSpec(name="failing-chat", kind=ModelKind.CHAT, engine="fake", path="-"),
    ModelSpec(name="fake-embed", kind=ModelKind.EMBEDDING, engine="fake", path="-"),
]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


class ScriptedChatEngine(FakeTextEngine):
    """Says REPLY one character a step, or, under a JSON schema (a forced tool call), the call:
    the arguments object for a named tool, an array of calls for "any". Stops at a stop string
    as vLLM does: the string is not in the text, and the delta names it."""

    fail_after: int | None = None

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec, max_model_len=4096)
        if spec.name == "failing-chat":
            self.fail_after = 3

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        template_kwargs: dict[str, Any] | None = None,
    ) -> list[int]:
        self.rendered = messages
        prompt = super().render_chat(
            messages, add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message
        )
        return prompt + self.tokenize(json.dumps(tools)) if tools else prompt

    async def generate(
        self, prompt_token_ids: list[int], options: SamplingOptions, request_id: str, *, media: Any = None
    ) -> AsyncIterator[GenerationStep]:
        schema = options.json_schema
        if schema is None:
            text = REPLY
        elif schema.get("type") == "array":
            text = json.dumps([{"name": "get_weather", "parameters": CALL}])
        else:
            text = json.dumps(CALL)
        # As vLLM does, text that may be the start of a stop string is held back until known.
        hold = max((len(s) for s in options.stop), default=1) - 1
        said = pending = ""
        for position, char in enumerate(text):
            if self.fail_after is not None and position == self.fail_after:
                raise EngineFailure(self.spec.name)
            said += char
            pending += char
            stop = next((s for s in options.stop if said.endswith(s)), None)
            last = position == len(text) - 1 or position == options.max_tokens - 1
            finish = "stop" if stop is not None or position == len(text) - 1 else ("length" if last else None)
            if stop is not None:
                shown, pending = pending[: len(pending) - len(stop)], ""
            elif finish is not None or len(pending) <= hold:
                shown, pending = (pending, "") if finish is not None else ("", pending)
            else:
                shown, pending = pending[: len(pending) - hold], pending[len(pending) - hold :]
            yield GenerationStep(
                prompt_tokens=len(prompt_token_ids),
                sequences=[
                    SequenceDelta(index=0, text=shown, token_ids=[ord(char)], finish_reason=finish, stop_string=stop)
                ],
            )
            if finish is not None:
                return


def factory(spec: ModelSpec) -> Any:
    return FakeEmbeddingEngine(spec) if spec.kind is ModelKind.EMBEDDING else ScriptedChatEngine(spec)


@pytest.fixture
async def base_url(tmp_path: Path) -> AsyncIterator[str]:
    async with serve(tmp_path, specs=SPECS, factory=factory, auth={"static_keys": [KEY]}) as (url, _):
        yield url


async def post(base_url: str, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    """The server runs on the test's loop: requests are sent without blocking it."""
    sent = {"x-api-key": KEY, "anthropic-version": "2023-06-01", **headers}
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(f"{base_url}{path}", json=body, headers={k: v for k, v in sent.items() if v})


def body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}], **fields}


def events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs; every event's name is its data's type."""
    pairs = []
    for frame in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"]
        pairs.append((lines["event"], data))
    return pairs


def error_of(response: httpx.Response) -> dict[str, Any]:
    payload = response.json()
    assert payload["type"] == "error" and set(payload) == {"type", "error"}
    error: dict[str, Any] = payload["error"]
    return error


# Translation.


def test_translation_of_system_tools_and_history() -> None:
    raw = body(
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        stop_sequences=["END"],
        metadata={"user_id": "u-1"},
        tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Looking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": CALL},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "Sunny"}]},
                    {"type": "text", "text": "Thanks"},
                ],
            },
        ],
    )
    request = chat_request(msgspec.convert(raw, MessagesRequest))
    roles = [(m.role, m.content) for m in request.messages]
    assert roles == [
        ("system", "Be brief.\nBe kind."),
        ("user", "Weather?"),
        ("assistant", "Looking."),
        ("tool", "Sunny"),
        ("user", "Thanks"),
    ]
    assistant, tool = request.messages[2], request.messages[3]
    assert assistant.tool_calls is not None and json.loads(assistant.tool_calls[0].function.arguments) == CALL
    assert assistant.tool_calls[0].id == tool.tool_call_id == "toolu_1"
    assert request.stop == ["END"] and request.max_tokens == 64 and request.user == "u-1"
    assert request.tools is not None and request.tools[0].function.parameters == WEATHER_TOOL["input_schema"]
    assert msgspec.to_builtins(request.tool_choice) == {"type": "function", "function": {"name": "get_weather"}}
    assert request.parallel_tool_calls is False


@pytest.mark.parametrize(
    ("choice", "expected"), [({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none")]
)
def test_tool_choice_translation(choice: dict[str, Any], expected: str) -> None:
    request = chat_request(msgspec.convert(body(tools=[WEATHER_TOOL], tool_choice=choice), MessagesRequest))
    assert request.tool_choice == expected and request.parallel_tool_calls is None


# The error envelope.


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        (ErrorCode.INVALID_REQUEST_BODY, 400, "invalid_request_error"),
        (ErrorCode.MISSING_API_KEY, 401, "authentication_error"),
        (ErrorCode.INVALID_API_KEY, 403, "authentication_error"),
        (ErrorCode.API_NOT_ALLOWED, 403, "permission_error"),
        (ErrorCode.MODEL_NOT_FOUND, 404, "not_found_error"),
        (ErrorCode.REQUEST_BODY_TOO_LARGE, 413, "request_too_large"),
        (ErrorCode.RATE_LIMIT_EXCEEDED, 429, "rate_limit_error"),
        (ErrorCode.QUEUE_FULL, 429, "overloaded_error"),
        (ErrorCode.ENGINE_ERROR, 500, "api_error"),
        (ErrorCode.SERVICE_NOT_AVAILABLE, 503, "overloaded_error"),
    ],
)
def test_error_envelope(code: ErrorCode, status: int, kind: str) -> None:
    error = ApiError(code, "Something is wrong.", param="max_tokens")
    assert error.status == status
    assert json.loads(anthropic_error_body(error)) == {
        "type": "error",
        "error": {"type": kind, "message": "max_tokens: Something is wrong."},
    }


def test_only_the_messages_routes_speak_anthropic() -> None:
    families = [error_family(path) for path in ("/v1/messages", "/v1/messages/count_tokens", "/v1/chat/completions")]
    assert [family.value for family in families] == ["anthropic", "anthropic", "openai"]


# The route.


async def test_message_whole_with_usage_matching_count_tokens(base_url: str) -> None:
    response = await post(base_url, "/v1/messages", body(system="Be brief."))
    assert response.status_code == 200, response.text
    message = response.json()
    assert message["id"].startswith("msg_") and message["type"] == "message" and message["role"] == "assistant"
    assert message["content"] == [{"type": "text", "text": REPLY}]
    assert message["model"] == MODEL
    assert (message["stop_reason"], message["stop_sequence"]) == ("end_turn", None)
    counted = await post(
        base_url, "/v1/messages/count_tokens", {"model": MODEL, "system": "Be brief.", "messages": body()["messages"]}
    )
    assert counted.status_code == 200, counted.text
    prompt = "system:Be brief.\nuser:Hi\nassistant:"
    assert counted.json() == {"input_tokens": len(prompt)}
    assert message["usage"] == {"input_tokens": len(prompt), "output_tokens": len(REPLY)}


async def test_stop_reasons(base_url: str) -> None:
    cut = (await post(base_url, "/v1/messages", body(max_tokens=5))).json()
    assert (cut["content"], cut["stop_reason"], cut["usage"]["output_tokens"]) == (
        [{"type": "text", "text": "Hello"}],
        "max_tokens",
        5,
    )
    stopped = (await post(base_url, "/v1/messages", body(stop_sequences=["STOP", "never"]))).json()
    assert stopped["content"] == [{"type": "text", "text": "Hello there. "}]
    assert (stopped["stop_reason"], stopped["stop_sequence"]) == ("stop_sequence", "STOP")


async def test_stream_events_in_anthropic_order(base_url: str) -> None:
    response = await post(base_url, "/v1/messages", body(stream=True, stop_sequences=["now"]))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    sent = events(response)
    names = [name for name, _ in sent]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    start = sent[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["input_tokens"] > 0
    assert sent[2][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    text = "".join(data["delta"]["text"] for name, data in sent if name == "content_block_delta")
    assert text == "Hello there. STOP "
    assert sent[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "stop_sequence", "stop_sequence": "now"},
        "usage": {"output_tokens": len("Hello there. STOP now")},
    }


@pytest.mark.parametrize("choice", [{"type": "tool", "name": "get_weather"}, {"type": "any"}])
async def test_forced_tool_use(base_url: str, choice: dict[str, Any]) -> None:
    message = (await post(base_url, "/v1/messages", body(tools=[WEATHER_TOOL], tool_choice=choice))).json()
    assert message["stop_reason"] == "tool_use", message
    [block] = message["content"]
    assert block["type"] == "tool_use" and block["id"].startswith("toolu_")
    assert (block["name"], block["input"]) == ("get_weather", CALL)

    sent = events(await post(base_url, "/v1/messages", body(tools=[WEATHER_TOOL], tool_choice=choice, stream=True)))
    starts = [data["content_block"] for name, data in sent if name == "content_block_start"]
    assert [(b["type"], b["name"], b["input"]) for b in starts] == [("tool_use", "get_weather", {})]
    pieces = [data["delta"] for name, data in sent if name == "content_block_delta"]
    assert {piece["type"] for piece in pieces} == {"input_json_delta"}
    assert json.loads("".join(piece["partial_json"] for piece in pieces)) == CALL
    assert sent[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_output_config_format_is_structured_output(base_url: str) -> None:
    schema = WEATHER_TOOL["input_schema"]
    message = (
        await post(base_url, "/v1/messages", body(output_config={"format": {"type": "json_schema", "schema": schema}}))
    ).json()
    [block] = message["content"]
    assert (block["type"], json.loads(block["text"]), message["stop_reason"]) == ("text", CALL, "end_turn")


async def test_ignored_and_refused_fields(base_url: str) -> None:
    hints = {"thinking": {"type": "disabled"}, "service_tier": "auto", "inference_geo": "us", "speed": "fast"}
    ignored = {**hints, "cache_control": {"type": "ephemeral"}, "output_config": {"effort": "low"}}
    accepted = await post(base_url, "/v1/messages", body(**ignored))
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["content"] == [{"type": "text", "text": REPLY}]
    refused = await post(base_url, "/v1/messages", body(mcp_servers=[]))
    assert refused.status_code == 400
    assert error_of(refused)["type"] == "invalid_request_error" and "mcp_servers" in error_of(refused)["message"]
    missing = await post(base_url, "/v1/messages", {"model": MODEL, "messages": body()["messages"]})
    assert missing.status_code == 400 and "max_tokens" in error_of(missing)["message"]
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    with_image = await post(base_url, "/v1/messages", body(messages=[{"role": "user", "content": [image]}]))
    assert with_image.status_code == 400
    assert error_of(with_image) == {
        "type": "invalid_request_error",
        "message": "messages[0].content[0]: This model accepts text content only; image blocks are not supported.",
    }
    prefill = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Well,"}]
    prefilled = await post(base_url, "/v1/messages", body(messages=prefill))
    assert prefilled.status_code == 400 and error_of(prefilled)["message"].startswith("messages[1]: ")
    bad_stop = await post(base_url, "/v1/messages", body(max_tokens=100_000))
    assert bad_stop.status_code == 400 and "max_tokens" in error_of(bad_stop)["message"]


async def test_models_keys_and_versions(base_url: str) -> None:
    unknown = await post(base_url, "/v1/messages", body(model="no-such-model"))
    assert (unknown.status_code, error_of(unknown)["type"]) == (404, "not_found_error")
    wrong_kind = await post(base_url, "/v1/messages", body(model="fake-embed"))
    assert (wrong_kind.status_code, error_of(wrong_kind)["type"]) == (400, "invalid_request_error")
    no_key = await post(base_url, "/v1/messages", body(), **{"x-api-key": ""})
    assert (no_key.status_code, error_of(no_key)["type"]) == (401, "authentication_error")
    bad_key = await post(base_url, "/v1/messages", body(), **{"x-api-key": "sk-wrong"})
    assert (bad_key.status_code, error_of(bad_key)["type"]) == (403, "authentication_error")
    bearer = await post(base_url, "/v1/messages", body(), **{"x-api-key": "", "Authorization": f"Bearer {KEY}"})
    assert bearer.status_code == 200, bearer.text
    version = await post(base_url, "/v1/messages", body(), **{"anthropic-version": "latest"})
    assert version.status_code == 400 and "anthropic-version" in error_of(version)["message"]
    dated = await post(base_url, "/v1/messages", body(), **{"anthropic-version": "2024-10-22"})
    assert dated.status_code == 200


async def test_failure_after_the_stream_began_is_an_error_event(base_url: str) -> None:
    response = await post(base_url, "/v1/messages", body(model="failing-chat", stream=True))
    assert response.status_code == 200
    sent = events(response)
    assert sent[0][0] == "message_start"
    name, data = sent[-1]
    assert name == "error" and data["error"]["type"] == "api_error"
    assert "message_stop" not in [name for name, _ in sent]


# Metering and tracing: as chat.


async def test_a_metered_key_pays_for_the_tokens_it_used(tmp_path: Path) -> None:
    # One credit per prompt token, two per generated token: exact in floating point.
    prices = {"price_per_1k_input_tokens": 1000.0, "price_per_1k_output_tokens": 2000.0}
    async with serve(tmp_path, specs=SPECS, factory=factory, accounts=prices) as (url, state):
        info, key = state.keystore.create("metered")
        state.keystore.set_credits(info.id, 10_000.0)
        whole = (await post(url, "/v1/messages", body(max_tokens=7), **{"x-api-key": key})).json()
        used = whole["usage"]["input_tokens"] + 2 * whole["usage"]["output_tokens"]
        account = state.keystore.account(info.id)
        assert account is not None and account.credits == 10_000.0 - used
        streamed = events(await post(url, "/v1/messages", body(max_tokens=7, stream=True), **{"x-api-key": key}))
        output_tokens = streamed[-2][1]["usage"]["output_tokens"]
        account = state.keystore.account(info.id)
        assert account is not None and account.credits == 10_000.0 - 2 * used
        assert output_tokens == whole["usage"]["output_tokens"] == 7


async def test_a_message_is_traced_as_a_chat(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    FORWARD.target = SimpleSpanProcessor(exporter)
    try:
        state = build_components(msgspec.convert({"data_dir": str(tmp_path)}, Settings), SPECS, {"fake": factory})
        async with AsyncTestClient(create_app(state, tracer_provider=PROVIDER)) as client:
            await state.load_task  # type: ignore[misc]
            response = await client.post("/v1/messages", json=body(max_tokens=4))
            assert response.status_code == 200, response.text
        spans = {span.name: span for span in exporter.get_finished_spans()}
        server, chat = spans["POST /v1/messages"], spans[f"chat {MODEL}"]
        assert chat.parent is not None and chat.parent.span_id == server.context.span_id
        attributes = dict(chat.attributes or {})
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.request.model"] == MODEL
        assert attributes["gen_ai.usage.output_tokens"] == 4
    finally:
        FORWARD.target = None
