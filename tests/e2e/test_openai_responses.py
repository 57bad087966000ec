"""The Responses API through the official openai SDK against a running omniserve, on the tiny
random demo chat model (its answers are random text; what is checked is their shape)."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from engines.demo import TINY_CHAT_MODEL
from tests.e2e.conftest import RunningServer

pytestmark = pytest.mark.e2e

# The demo catalog's chat model (it has the hermes tool parser).
CHAT_MODEL = TINY_CHAT_MODEL

UNIT_TOOL: Any = {
    "type": "function",
    "name": "set_unit",
    "description": "Choose the temperature unit.",
    "parameters": {
        "type": "object",
        "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["unit"],
        "additionalProperties": False,
    },
    "strict": True,
}


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_url, api_key=server.api_key, max_retries=0, timeout=120)


def test_create_answers_a_response_object(client: openai.OpenAI) -> None:
    result = client.responses.create(
        model=CHAT_MODEL, input="Write about the sea.", instructions="Be brief.", max_output_tokens=16
    )
    assert result.id.startswith("resp_") and result.object == "response"
    assert result.status in ("completed", "incomplete")
    if result.status == "incomplete":
        assert result.incomplete_details is not None and result.incomplete_details.reason == "max_output_tokens"
    [message] = result.output
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    assert result.usage is not None and 0 < result.usage.output_tokens <= 16
    assert result.usage.total_tokens == result.usage.input_tokens + result.usage.output_tokens
    assert result.usage.input_tokens_details.cached_tokens == 0


def test_streamed_events_arrive_in_order_and_add_up(client: openai.OpenAI) -> None:
    with client.responses.stream(model=CHAT_MODEL, input="Write about the sea.", max_output_tokens=12) as stream:
        events = list(stream)
    types = [event.type for event in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert types[-1] in ("response.completed", "response.incomplete")
    assert [event.sequence_number for event in events] == list(range(len(events)))
    final = events[-1].response  # type: ignore[union-attr]
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert deltas and final.output_text == deltas
    assert final.usage is not None and final.usage.output_tokens <= 12


def test_a_forced_function_tool_returns_a_call(client: openai.OpenAI) -> None:
    forced: Any = {"type": "function", "name": "set_unit"}
    result = client.responses.create(
        model=CHAT_MODEL, input="Which unit?", tools=[UNIT_TOOL], tool_choice=forced, max_output_tokens=40
    )
    assert result.status == "completed"
    [call] = result.output
    assert call.type == "function_call" and call.name == "set_unit" and call.call_id
    assert json.loads(call.arguments)["unit"] in ("celsius", "fahrenheit")

    # Streamed, through the SDK's accumulating helper.
    with client.responses.stream(
        model=CHAT_MODEL, input="Which unit?", tools=[UNIT_TOOL], tool_choice=forced, max_output_tokens=40
    ) as stream:
        deltas = "".join(event.delta for event in stream if event.type == "response.function_call_arguments.delta")
        final = stream.get_final_response()
    [streamed] = final.output
    assert streamed.type == "function_call" and streamed.arguments == deltas
    assert json.loads(deltas)["unit"] in ("celsius", "fahrenheit")


def test_json_schema_format_shapes_the_text(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"enum": ["red", "green"]}, "ripe": {"type": "boolean"}},
        "required": ["colour", "ripe"],
        "additionalProperties": False,
    }
    result = client.responses.create(
        model=CHAT_MODEL,
        input="Describe an apple.",
        text={"format": {"type": "json_schema", "name": "apple", "schema": schema, "strict": True}},
        max_output_tokens=200,
    )
    assert result.text is not None and result.text.format.type == "json_schema"
    if result.status == "completed":
        parsed = json.loads(result.output_text)
        assert parsed["colour"] in ("red", "green") and isinstance(parsed["ripe"], bool)
    else:  # a random model may pad with whitespace up to the limit; the text is still schema-shaped
        assert result.output_text.lstrip().startswith("{")


def test_stored_responses_chain_and_delete(client: openai.OpenAI) -> None:
    first = client.responses.create(model=CHAT_MODEL, input="Tell me about rivers.", max_output_tokens=8)
    stored = client.responses.retrieve(first.id)
    assert stored.id == first.id and stored.output_text == first.output_text

    second = client.responses.create(
        model=CHAT_MODEL, input="And lakes?", previous_response_id=first.id, max_output_tokens=8
    )
    assert second.previous_response_id == first.id
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens  # the first turn is part of its input
    items = client.responses.input_items.list(second.id)
    assert [item.type for item in items.data] == ["message"]

    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.retrieve(first.id)
    assert caught.value.body["code"] == "RESPONSE_NOT_FOUND"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=CHAT_MODEL, input="More?", previous_response_id=first.id)
