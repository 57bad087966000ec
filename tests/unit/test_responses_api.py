"""The Responses API over fake chat engines: translation, events (read by the openai SDK),
stored responses and their scoping, errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pydantic
import pytest
from openai.types.responses import Response as SdkResponse
from openai.types.responses import ResponseItemList, ResponseStreamEvent
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from engines.base import GenerationStep, ModelKind, ModelSpec, SamplingOptions, SequenceDelta
from schemas.errors import ApiError
from schemas.openai.chat import ImagePart, NamedToolChoice, TextPart
from schemas.openai.responses import FunctionCallItem, MessageItem, Response, ResponseRequest, ResponseUsage
from server.capabilities.text.responses_events import ResponseEvents
from server.capabilities.text.responses_items import chat_messages, chat_request, normalised_items
from server.capabilities.text.responses_store import ResponseStore, StoredResponse
from tests.fakes import FakeTextEngine, fake_factory
from tests.tracing import FORWARD
from tests.unit.conftest import make_state
from tests.unit.serving import serve
from tests.unit.test_tracing import finished_spans, named, traced_client

# The SDK's event classes by their type, to validate each strictly against its own class.
SDK_EVENTS: dict[str, type[pydantic.BaseModel]] = {
    model.model_fields["type"].annotation.__args__[0]: model  # type: ignore[union-attr]
    for model in ResponseStreamEvent.__origin__.__args__  # type: ignore[attr-defined]
}


def request(**fields: Any) -> ResponseRequest:
    return msgspec.convert({"model": "fake-chat", **fields}, ResponseRequest)


# --- translation ------------------------------------------------------------------------------


def test_items_become_chat_messages_with_instructions_first() -> None:
    body = request(
        instructions="Be brief.",
        input=[
            {"role": "developer", "content": "Use metric units."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
            {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city":"Oslo"}'},
            {"type": "function_call", "call_id": "call_2", "name": "weather", "arguments": '{"city":"Rome"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "4 C"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Cold.", "annotations": []}]},
        ],
    )
    messages = chat_messages(body.instructions, normalised_items(body))
    assert [m.role for m in messages] == ["system", "developer", "user", "assistant", "tool", "assistant"]
    assert messages[0].content == "Be brief."
    assert messages[2].content == "Weather?"
    calls = messages[3].tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_1", "weather", '{"city":"Oslo"}'),
        ("call_2", "weather", '{"city":"Rome"}'),
    ]
    assert (messages[4].tool_call_id, messages[4].content) == ("call_1", "4 C")
    assert messages[5].content == "Cold."


def test_a_string_input_is_one_user_message_and_images_reach_chat_as_image_parts() -> None:
    [item] = normalised_items(request(input="Hello"))
    assert isinstance(item, MessageItem) and item.role == "user" and item.id.startswith("msg_")
    body = request(
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": "https://example.com/a.png"},
                ],
            }
        ]
    )
    [message] = chat_messages(None, normalised_items(body))
    assert isinstance(message.content, list)
    assert isinstance(message.content[0], TextPart) and isinstance(message.content[1], ImagePart)


def test_the_request_fields_map_to_chat() -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    chat = chat_request(
        request(
            input="x",
            max_output_tokens=7,
            temperature=0.5,
            top_p=0.9,
            text={"format": {"type": "json_schema", "name": "verdict", "schema": schema, "strict": True}},
            tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            tool_choice={"type": "function", "name": "f"},
        ),
        [],
    )
    assert (chat.max_completion_tokens, chat.temperature, chat.top_p) == (7, 0.5, 0.9)
    assert chat.response_format is not None and chat.response_format.json_schema is not None
    assert chat.response_format.json_schema.schema == schema and chat.response_format.json_schema.name == "verdict"
    assert chat.tools is not None and chat.tools[0].function.name == "f"
    assert isinstance(chat.tool_choice, NamedToolChoice) and chat.tool_choice.function.name == "f"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": [{"content": "no role"}]}, "input[0]"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input[0]"),
        ({"input": [{"role": "user", "content": "ok"}, {"type": "function_call_output", "output": "x"}]}, "input[1]"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}, "text.format.schema"),
        ({"input": "x", "background": True}, "background"),
    ],
)
def test_incomplete_items_and_unsupported_fields_are_refused(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as caught:
        body = request(**fields)
        chat_request(body, normalised_items(body))
    assert caught.value.status == 400 and caught.value.param == param


# --- the event sequence -----------------------------------------------------------------------


def test_events_open_one_item_at_a_time_and_number_every_event() -> None:
    base = msgspec.convert(
        {"id": "resp_1", "created_at": 1, "status": "in_progress", "model": "m"},
        Response,
    )
    events = ResponseEvents(base)
    sent = [*events.start(), *events.text("Hel"), *events.text("lo")]
    sent += events.tool_call(0, "call_a", "f", '{"a"')
    sent += events.tool_call(0, None, None, ": 1}")
    response, closing = events.finish(ResponseUsage(input_tokens=3, output_tokens=4, total_tokens=7), truncated=False)
    sent += [*closing, events.end(response)]
    parsed = [json.loads(event.split(b"data: ", 1)[1]) for event in sent]
    assert [event.split(b"\n", 1)[0].removeprefix(b"event: ").decode() for event in sent] == [e["type"] for e in parsed]
    assert [e["type"] for e in parsed] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in parsed] == list(range(len(parsed)))
    for event in parsed:  # strictly, as the SDK's types declare them (its own parsing is lenient)
        SDK_EVENTS[event["type"]].model_validate(event)
    assert [e["output_index"] for e in parsed if "output_index" in e] == [0] * 7 + [1] * 5
    assert parsed[6]["text"] == "Hello" and parsed[12]["arguments"] == '{"a": 1}'
    message, call = response.output
    assert isinstance(message, MessageItem) and isinstance(call, FunctionCallItem)
    assert (call.call_id, call.name, call.status) == ("call_a", "f", "completed")
    assert response.status == "completed" and response.usage is not None and response.usage.total_tokens == 7


# --- over HTTP, read by the openai SDK -------------------------------------------------------


class ScriptedTextEngine(FakeTextEngine):
    """Says ``script`` piece by piece (one token per character) and stops."""

    script: Sequence[str] = ("Hello", ", ", "world")

    async def generate(
        self, prompt_token_ids: list[int], options: SamplingOptions, request_id: str, *, media: Any = None
    ) -> AsyncIterator[GenerationStep]:
        pieces = list(self.script)
        for position, piece in enumerate(pieces):
            last = position == len(pieces) - 1
            yield GenerationStep(
                prompt_tokens=len(prompt_token_ids),
                sequences=[
                    SequenceDelta(
                        index=0, text=piece, token_ids=[ord(c) for c in piece], finish_reason="stop" if last else None
                    )
                ],
            )


def scripted_factory(spec: ModelSpec) -> Any:
    if spec.kind == ModelKind.CHAT:
        return ScriptedTextEngine(spec, max_model_len=256)
    return fake_factory(spec)


def sdk(url: str, key: str = "any", prefix: str = "/v1") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + prefix, api_key=key, max_retries=0, timeout=30)


async def test_create_stream_retrieve_chain_and_delete_through_the_sdk(tmp_path: Path) -> None:
    async with serve(tmp_path, factory=scripted_factory) as (url, _):
        client = sdk(url)
        first = await client.responses.create(model="fake-chat", input="Hi", instructions="Be kind.")
        assert first.id.startswith("resp_") and first.status == "completed"
        assert first.output_text == "Hello, world" and first.instructions == "Be kind."
        assert first.usage is not None and first.usage.output_tokens == len("Hello, world")
        assert first.usage.total_tokens == first.usage.input_tokens + first.usage.output_tokens

        deltas: list[str] = []
        types: list[str] = []
        async with client.responses.stream(model="fake-chat", input="Hi", previous_response_id=first.id) as stream:
            async for event in stream:
                types.append(event.type)
                if event.type == "response.output_text.delta":
                    deltas.append(event.delta)
            final = await stream.get_final_response()
        assert types[0] == "response.created" and types[-1] == "response.completed"
        assert final.output_text == "".join(deltas) == "Hello, world"
        assert final.previous_response_id == first.id
        # The chain's input is the first turn, its answer, then this turn.
        assert final.usage is not None and first.usage is not None
        assert final.usage.input_tokens > first.usage.input_tokens

        stored = await client.responses.retrieve(final.id)
        assert stored.output_text == "Hello, world" and stored.status == "completed"
        items = await client.responses.input_items.list(final.id, order="asc")
        assert [item.type for item in items.data] == ["message"]  # its own input, not the chain's

        await client.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError) as caught:
            await client.responses.retrieve(first.id)
        assert caught.value.body["code"] == "RESPONSE_NOT_FOUND"  # type: ignore[index]


async def test_a_forced_function_call_is_a_function_call_item(tmp_path: Path) -> None:
    ScriptedTextEngine.script = ('{"city": ', '"Oslo"}')
    try:
        async with serve(tmp_path, factory=scripted_factory) as (url, _):
            client = sdk(url, prefix="/openai/v1")
            tools: Any = [
                {
                    "type": "function",
                    "name": "weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                    "strict": False,
                }
            ]
            forced: Any = {"type": "function", "name": "weather"}
            result = await client.responses.create(model="fake-chat", input="Oslo?", tools=tools, tool_choice=forced)
            [call] = result.output
            assert call.type == "function_call" and call.name == "weather"
            assert json.loads(call.arguments) == {"city": "Oslo"} and call.call_id

            events = [
                event
                async for event in await client.responses.create(
                    model="fake-chat", input="Oslo?", tools=tools, tool_choice=forced, stream=True
                )
            ]
            deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
            [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
            assert "".join(deltas) == done.arguments == '{"city": "Oslo"}'
            assert events[-1].type == "response.completed"
            assert events[-1].response.output[0].type == "function_call"
    finally:
        ScriptedTextEngine.script = ("Hello", ", ", "world")


async def test_truncated_answers_are_incomplete(tmp_path: Path) -> None:
    async with serve(tmp_path) as (url, _):
        client = sdk(url)
        result = await client.responses.create(model="fake-chat", input="Hi", max_output_tokens=3)
        assert result.status == "incomplete" and result.incomplete_details is not None
        assert result.incomplete_details.reason == "max_output_tokens" and result.output_text == "aba"
        events = [
            e
            async for e in await client.responses.create(
                model="fake-chat", input="Hi", max_output_tokens=3, stream=True
            )
        ]
        assert events[-1].type == "response.incomplete"


async def test_errors_are_in_the_openai_envelope(tmp_path: Path) -> None:
    limited = serve(tmp_path, responses={"max_conversation_bytes": 150})
    async with limited as (url, _), httpx.AsyncClient(base_url=url, timeout=30) as http:
        for path in ("/v1/responses/resp_nope", "/openai/v1/responses/resp_nope"):
            missing = await http.get(path)
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "RESPONSE_NOT_FOUND"
        chained = await http.post(
            "/v1/responses", json={"model": "fake-chat", "input": "x", "previous_response_id": "resp_nope"}
        )
        assert chained.status_code == 404 and chained.json()["error"]["param"] == "previous_response_id"
        image = await http.post(
            "/v1/responses",
            json={
                "model": "fake-chat",
                "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://a/b.png"}]}],
                "store": False,
            },
        )
        assert image.status_code == 400 and "text content parts only" in image.json()["error"]["message"]
        big = {"model": "fake-chat", "input": "x" * 40, "max_output_tokens": 1}
        too_big = await http.post("/v1/responses", json=big)
        assert too_big.status_code == 400 and "max_conversation_bytes" in too_big.json()["error"]["message"]
        unstored = await http.post("/v1/responses", json={**big, "store": False})
        assert unstored.status_code == 200
        assert (await http.get(f"/v1/responses/{unstored.json()['id']}")).status_code == 404
        bad_type = await http.post("/v1/responses", json={"model": "fake-chat", "input": 3})
        assert bad_type.status_code == 400 and bad_type.json()["error"]["type"] == "invalid_request_error"
        unknown_model = await http.post("/v1/responses", json={"model": "nope", "input": "x", "stream": True})
        assert unknown_model.status_code == 404 and unknown_model.json()["error"]["code"] == "MODEL_NOT_FOUND"


# --- storage ----------------------------------------------------------------------------------


def stored(response_id: str) -> StoredResponse:
    body = request(input="hi")
    response = msgspec.convert(
        {"id": response_id, "created_at": 1, "status": "completed", "model": "m"},
        Response,
    )
    return StoredResponse(response=response, conversation=normalised_items(body), own_input_start=0)


def test_stored_responses_belong_to_their_key_expire_and_are_capped(tmp_path: Path) -> None:
    now = [1000.0]
    store = ResponseStore(tmp_path / "r.sqlite3", retention_s=100, max_per_owner=2, clock=lambda: now[0])
    store.put("key-a", stored("resp_1"))
    assert store.get("key-b", "resp_1") is None
    assert not store.delete("key-b", "resp_1")
    found = store.get("key-a", "resp_1")
    assert found is not None and found.response.id == "resp_1" and len(found.own_input) == 1
    now[0] += 1
    store.put("key-a", stored("resp_2"))
    now[0] += 1
    store.put("key-a", stored("resp_3"))  # past the cap of 2: the oldest goes
    assert store.get("key-a", "resp_1") is None and store.count("key-a") == 2
    now[0] += 101
    assert store.get("key-a", "resp_3") is None  # expired
    store.put("key-b", stored("resp_4"))  # a write deletes what expired
    assert store.count("key-a") == 0 and store.count("key-b") == 1
    store.close()
    # Durable: a new store on the same file reads what was kept.
    again = ResponseStore(tmp_path / "r.sqlite3", retention_s=0, max_per_owner=2)
    assert again.get("key-b", "resp_4") is not None
    again.close()


async def test_one_key_cannot_read_or_delete_another_keys_responses(tmp_path: Path) -> None:
    async with serve(tmp_path, factory=scripted_factory) as (url, state):
        _, key_a = state.keystore.create("a")
        _, key_b = state.keystore.create("b")
        made = await sdk(url, key_a).responses.create(model="fake-chat", input="Hi")
        other = sdk(url, key_b)
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(made.id)
        with pytest.raises(openai.NotFoundError):
            await other.responses.delete(made.id)
        with pytest.raises(openai.NotFoundError):
            await other.responses.create(model="fake-chat", input="more", previous_response_id=made.id)
        assert (await sdk(url, key_a).responses.retrieve(made.id)).id == made.id


class FailingTextEngine(ScriptedTextEngine):
    async def generate(
        self, prompt_token_ids: list[int], options: SamplingOptions, request_id: str, *, media: Any = None
    ) -> AsyncIterator[GenerationStep]:
        yield GenerationStep(
            prompt_tokens=len(prompt_token_ids), sequences=[SequenceDelta(index=0, text="He", token_ids=[72, 101])]
        )
        raise RuntimeError("the device at /dev/secret fell over")


async def test_a_failure_after_the_stream_began_is_an_error_event(tmp_path: Path) -> None:
    def factory(spec: ModelSpec) -> Any:
        return FailingTextEngine(spec, max_model_len=256) if spec.kind == ModelKind.CHAT else fake_factory(spec)

    async with serve(tmp_path, factory=factory) as (url, _), httpx.AsyncClient(base_url=url, timeout=30) as http:
        body = {"model": "fake-chat", "input": "Hi", "stream": True}
        async with http.stream("POST", "/v1/responses", json=body) as response:
            assert response.status_code == 200
            text = (await response.aread()).decode()
    events = [json.loads(block.split("data: ", 1)[1]) for block in text.strip().split("\n\n")]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-2]["type"] == "response.output_text.delta" and events[-2]["delta"] == "He"
    assert events[-1]["type"] == "error" and "/dev/secret" not in events[-1]["message"]
    assert events[-1]["code"] == "UNKNOWN"


async def test_responses_are_metered_as_chat_is(tmp_path: Path) -> None:
    prices = {"price_per_1k_input_tokens": 1000.0, "price_per_1k_output_tokens": 1000.0, "requests_per_hour": 0}
    async with serve(tmp_path, accounts=prices) as (url, state):
        info, key = state.keystore.create("metered")
        state.keystore.set_credits(info.id, 100)
        client = sdk(url, key)
        made = await client.responses.create(model="fake-chat", input="hi", max_output_tokens=5)
        assert made.usage is not None
        assert state.keystore.account(info.id).credits == pytest.approx(100 - made.usage.total_tokens)  # type: ignore[union-attr]
        streamed = await client.responses.create(model="fake-chat", input="hi", max_output_tokens=4, stream=True)
        final = [event async for event in streamed][-1]
        assert final.type == "response.incomplete" and final.response.usage is not None
        spent = made.usage.total_tokens + final.response.usage.total_tokens
        assert state.keystore.account(info.id).credits == pytest.approx(100 - spent)  # type: ignore[union-attr]
        assert state.keystore.open_reservations() == ()


async def test_the_answers_validate_strictly_against_the_sdks_types(tmp_path: Path) -> None:
    tool = {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": False}
    # tool_choice "required" has the model write a list of calls (the schema chat guides it with).
    ScriptedTextEngine.script = ('[{"name": "f", ', '"parameters": {"a": 1}}]')
    try:
        async with serve(tmp_path, factory=scripted_factory) as (url, _), httpx.AsyncClient(base_url=url) as http:
            text = (await http.post("/v1/responses", json={"model": "fake-chat", "input": "Hi"})).json()
            SdkResponse.model_validate(text)
            body = {
                "model": "fake-chat",
                "input": [
                    {"role": "user", "content": "Hi"},
                    {"type": "function_call_output", "call_id": "c", "output": "1"},
                ],
                "tools": [tool],
                "tool_choice": "required",
                "text": {"format": {"type": "json_object"}},
                "previous_response_id": text["id"],
            }
            called = (await http.post("/v1/responses", json=body)).json()
            SdkResponse.model_validate(called)
            assert [(item["type"], item["name"], item["arguments"]) for item in called["output"]] == [
                ("function_call", "f", '{"a": 1}')
            ]
            assert called["tool_choice"] == "required" and called["text"]["format"] == {"type": "json_object"}
            items = (await http.get(f"/v1/responses/{called['id']}/input_items", params={"order": "asc"})).json()
            ResponseItemList.model_validate(items)
            assert [item["type"] for item in items["data"]] == ["message", "function_call_output"]
            first_page = (await http.get(f"/v1/responses/{called['id']}/input_items", params={"limit": 1})).json()
            assert first_page["has_more"] and first_page["data"][0]["type"] == "function_call_output"
            bad_limit = await http.get(f"/v1/responses/{called['id']}/input_items", params={"limit": 0})
            assert bad_limit.status_code == 400 and bad_limit.json()["error"]["param"] == "limit"
            deleted = await http.delete(f"/v1/responses/{text['id']}")
            assert deleted.json() == {"id": text["id"], "object": "response.deleted", "deleted": True}
    finally:
        ScriptedTextEngine.script = ("Hello", ", ", "world")


async def test_a_client_that_leaves_a_stream_ends_its_generation(tmp_path: Path) -> None:
    async with serve(tmp_path) as (url, state):
        engine = state.scheduler.engine("fake-chat")
        assert isinstance(engine, FakeTextEngine)
        engine.step_delay = 0.05
        body = {"model": "fake-chat", "input": "Hi", "max_output_tokens": 40, "stream": True}
        async with httpx.AsyncClient(timeout=10) as http, http.stream("POST", url + "/v1/responses", json=body) as r:
            assert r.status_code == 200
            async for _ in r.aiter_bytes():
                break
            assert state.scheduler.queue_state()["fake-chat"] == (0, 1)
        async with asyncio.timeout(10):
            while not engine.aborted or state.scheduler.queue_state()["fake-chat"] != (0, 0):
                await asyncio.sleep(0.02)
        # Not stored: the client never heard it complete.
        assert state.response_store.count("") == 0


async def test_a_response_is_traced_as_a_chat_call_under_its_route(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    FORWARD.target = SimpleSpanProcessor(exporter)
    try:
        async for client in traced_client(make_state(tmp_path)):
            exporter.clear()
            body = {"model": "fake-chat", "input": "Hi", "max_output_tokens": 3, "stream": True}
            async with client.stream("POST", "/v1/responses", json=body) as response:
                assert response.status_code == 200
                await response.aread()
            spans = await finished_spans(exporter, "POST /v1/responses")
            server, generation = named(spans, "POST /v1/responses"), named(spans, "chat fake-chat")
            assert generation.context is not None and server.context is not None
            assert generation.context.trace_id == server.context.trace_id
            assert generation.attributes is not None and generation.attributes["gen_ai.usage.output_tokens"] == 3
    finally:
        FORWARD.target = None
