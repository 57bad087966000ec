"""The official anthropic SDK against a running omniserve: /v1/messages on the demo chat model."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from engines.demo import TINY_CHAT_MODEL
from tests.e2e.conftest import RunningServer

pytestmark = pytest.mark.e2e

MESSAGES: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Write about the sea."}]
WEATHER_TOOL: anthropic.types.ToolParam = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


@pytest.fixture(scope="module")
def client(server: RunningServer) -> anthropic.Anthropic:
    """The key in x-api-key, as Anthropic's API takes it (this SDK sends api_key as a Bearer token)."""
    return anthropic.Anthropic(
        base_url=server.base_url,
        api_key=None,
        default_headers={"x-api-key": server.api_key},
        max_retries=0,
        timeout=120,
    )


@pytest.fixture(scope="module")
def model(server: RunningServer) -> str:
    listed = httpx.get(
        f"{server.base_url}/v1/models", headers={"Authorization": f"Bearer {server.api_key}"}, timeout=10
    ).json()
    # The tiny random chat model: fast, with the Hermes tool parser.
    assert TINY_CHAT_MODEL in {entry["id"] for entry in listed["data"]}, listed
    return TINY_CHAT_MODEL


def test_create(client: anthropic.Anthropic, model: str) -> None:
    # This SDK has no sampling keywords; the API still takes them.
    message = client.messages.create(
        model=model,
        system="You are brief.",
        messages=MESSAGES,
        max_tokens=12,
        extra_body={"temperature": 0.7, "top_p": 0.9, "top_k": 20},
    )
    assert message.type == "message" and message.role == "assistant" and message.model == model
    assert message.id.startswith("msg_")
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert 0 < message.usage.output_tokens <= 12
    assert all(block.type == "text" for block in message.content)
    counted = client.messages.count_tokens(model=model, system="You are brief.", messages=MESSAGES)
    assert counted.input_tokens == message.usage.input_tokens > 0


def test_max_tokens_stop_reason_with_a_bearer_key(server: RunningServer, model: str) -> None:
    client = anthropic.Anthropic(base_url=server.base_url, api_key=server.api_key, max_retries=0, timeout=120)
    # One token is always a cut.
    message = client.messages.create(model=model, messages=MESSAGES, max_tokens=1)
    assert (message.stop_reason, message.usage.output_tokens) == ("max_tokens", 1)


def test_stop_sequence(client: anthropic.Anthropic, model: str) -> None:
    # Greedy decoding says the same text twice: a piece of it, as a stop sequence, ends the
    # second turn where it first appears, and is not part of the text.
    greedy = {"temperature": 0}
    said = client.messages.create(model=model, messages=MESSAGES, max_tokens=16, extra_body=greedy)
    text = "".join(block.text for block in said.content if block.type == "text")
    assert len(text) >= 6, said
    stop = text[len(text) // 2 :][:3]
    cut = client.messages.create(
        model=model, messages=MESSAGES, max_tokens=16, stop_sequences=[stop], extra_body=greedy
    )
    assert (cut.stop_reason, cut.stop_sequence) == ("stop_sequence", stop)
    assert "".join(block.text for block in cut.content if block.type == "text") == text[: text.index(stop)]


def test_stream(client: anthropic.Anthropic, model: str) -> None:
    with client.messages.stream(model=model, messages=MESSAGES, max_tokens=10) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert "".join(block.text for block in final.content if block.type == "text") == text
    assert 0 < final.usage.output_tokens <= 10
    assert final.usage.input_tokens == client.messages.count_tokens(model=model, messages=MESSAGES).input_tokens


def test_forced_tool_use(client: anthropic.Anthropic, model: str) -> None:
    message = client.messages.create(
        model=model,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        max_tokens=48,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert message.stop_reason == "tool_use", message
    [call] = [block for block in message.content if block.type == "tool_use"]
    assert call.name == "get_weather" and call.id.startswith("toolu_")
    assert isinstance(call.input, dict) and isinstance(call.input["city"], str)

    # The call and its result go back as history; the turn after them is served.
    follow_up = client.messages.create(
        model=model,
        max_tokens=4,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "none"},
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": [call.model_dump(include={"type", "id", "name", "input"})]},  # type: ignore[list-item]
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny"}]},
        ],
    )
    assert follow_up.usage.input_tokens > message.usage.input_tokens


def test_structured_output(client: anthropic.Anthropic, model: str) -> None:
    message = client.messages.create(
        model=model,
        messages=[{"role": "user", "content": "Weather in Rome as JSON."}],
        max_tokens=160,
        output_config={"format": {"type": "json_schema", "schema": WEATHER_TOOL["input_schema"]}},
    )
    assert message.stop_reason == "end_turn", message
    [block] = message.content
    assert block.type == "text"
    answer = json.loads(block.text)
    assert set(answer) == {"city"} and isinstance(answer["city"], str)


def test_streamed_tool_use(client: anthropic.Anthropic, model: str) -> None:
    with client.messages.stream(
        model=model,
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        max_tokens=48,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.stop_reason == "tool_use"
    [call] = final.content
    assert call.type == "tool_use" and isinstance(call.input, dict) and isinstance(call.input["city"], str)


def test_errors(client: anthropic.Anthropic, model: str, server: RunningServer) -> None:
    # The SDK will not send a request without max_tokens; the server refuses one as well.
    with pytest.raises(anthropic.BadRequestError) as missing:
        client.post("/v1/messages", body={"model": model, "messages": MESSAGES}, cast_to=httpx.Response)
    assert missing.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "max_tokens" in missing.value.message
    with pytest.raises(anthropic.BadRequestError, match="image"):
        image = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
        client.messages.create(
            model=model, max_tokens=4, messages=[{"role": "user", "content": [{"type": "image", "source": image}]}]
        )
    with pytest.raises(anthropic.NotFoundError) as unknown:
        client.messages.create(model="no-such-model", messages=MESSAGES, max_tokens=4)
    assert unknown.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    anonymous = anthropic.Anthropic(
        base_url=server.base_url, api_key=None, default_headers={"Authorization": anthropic.omit}, max_retries=0
    )
    with pytest.raises(anthropic.AuthenticationError):
        anonymous.messages.create(model=model, messages=MESSAGES, max_tokens=4)
    # A key that is not valid is 403 on every route of this server; its type says what it is.
    stranger = anthropic.Anthropic(base_url=server.base_url, api_key="sk-not-a-key", max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        stranger.messages.create(model=model, messages=MESSAGES, max_tokens=4)
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
