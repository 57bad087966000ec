"""The span tree of requests through the real app with fake engines, exported in memory."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from schemas.errors import ApiError, ErrorCode
from server.app import create_app
from server.composition import Components
from server.telemetry.logs import JsonFormatter
from tests.tracing import FORWARD, PROVIDER
from tests.unit.conftest import make_state
from tests.unit.test_webhooks import receiver

CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    FORWARD.target = SimpleSpanProcessor(exporter)
    yield exporter
    FORWARD.target = None


async def traced_client(state: Components) -> AsyncIterator[AsyncTestClient]:
    async with AsyncTestClient(create_app(state, tracer_provider=PROVIDER)) as client:
        await state.load_task  # type: ignore[misc]
        yield client


@pytest.fixture
async def client(tmp_path: Path, exporter: InMemorySpanExporter) -> AsyncIterator[AsyncTestClient]:
    state = make_state(tmp_path)
    async for client in traced_client(state):
        client.app_state = state  # type: ignore[attr-defined]
        exporter.clear()  # the model loads at startup are their own traces
        yield client


async def finished_spans(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    """All spans, once one named ``name`` has ended (the server span ends after the last byte)."""
    for _ in range(200):
        spans = list(exporter.get_finished_spans())
        if any(span.name == name for span in spans):
            return spans
        await asyncio.sleep(0.01)
    raise AssertionError(f"no span {name!r} among {[span.name for span in exporter.get_finished_spans()]}")


def named(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    [span] = [span for span in spans if span.name == name]
    return span


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_streamed_chat_span_tree(client: AsyncTestClient, exporter: InMemorySpanExporter) -> None:
    body = {**CHAT, "stream": True, "temperature": 0.5, "top_p": 0.9, "seed": 7}
    async with client.stream("POST", "/v1/chat/completions", json=body, headers={"x-request-id": "req-42"}) as response:
        assert response.status_code == 200
        assert response.headers["x-request-id"] == "req-42"
        events = [line async for line in response.aiter_lines() if line.startswith("data: {")]
    chunk_id = json.loads(events[0][6:])["id"]
    spans = await finished_spans(exporter, "POST /v1/chat/completions")

    server = named(spans, "POST /v1/chat/completions")
    auth = named(spans, "authenticate")
    chat = named(spans, "chat fake-chat")
    assert server.kind is SpanKind.SERVER
    assert server.attributes is not None and chat.attributes is not None
    assert server.attributes["omniserve.request_id"] == "req-42"
    assert server.attributes["http.route"] == "/v1/chat/completions"
    assert parent_of(auth) == parent_of(chat) == server.context.span_id
    assert {span.context.trace_id for span in (server, auth, chat)} == {server.context.trace_id}

    attributes = dict(chat.attributes)
    first_token = attributes.pop("gen_ai.server.time_to_first_token")
    assert isinstance(first_token, float) and 0 < first_token < chat.end_time - chat.start_time  # type: ignore[operator]
    assert attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "omniserve",
        "gen_ai.request.model": "fake-chat",
        "gen_ai.request.max_tokens": 3,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.request.top_p": 0.9,
        "gen_ai.request.seed": 7,
        "gen_ai.response.id": chunk_id,
        "gen_ai.response.model": "fake-chat",
        "gen_ai.response.finish_reasons": ("length",),
        "gen_ai.usage.input_tokens": len("user:hi\nassistant:"),
        "gen_ai.usage.output_tokens": 3,
    }
    assert chat.status.status_code is StatusCode.UNSET


async def test_embeddings_span_tree_and_generated_request_id(
    client: AsyncTestClient, exporter: InMemorySpanExporter
) -> None:
    response = await client.post("/openai/v1/embeddings", json={"model": "fake-embed", "input": ["abc", "de"]})
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    assert len(request_id) == 32 and int(request_id, 16) >= 0
    spans = await finished_spans(exporter, "POST /openai/v1/embeddings")
    server = named(spans, "POST /openai/v1/embeddings")
    embeddings = named(spans, "embeddings fake-embed")
    assert server.attributes is not None and embeddings.attributes is not None
    assert server.attributes["omniserve.request_id"] == request_id
    assert parent_of(embeddings) == server.context.span_id
    assert embeddings.attributes["gen_ai.operation.name"] == "embeddings"
    assert embeddings.attributes["gen_ai.usage.input_tokens"] == 5
    assert "gen_ai.usage.output_tokens" not in embeddings.attributes
    assert sorted(span.name for span in spans) == [
        "POST /openai/v1/embeddings",
        "authenticate",
        "embeddings fake-embed",
    ]


async def test_a_malformed_request_id_is_replaced(client: AsyncTestClient) -> None:
    for bad in ("has space", "x" * 129, "semi;colon"):
        response = await client.get("/v1/models", headers={"x-request-id": bad})
        assert response.headers["x-request-id"] != bad
        assert len(response.headers["x-request-id"]) == 32


async def test_failures_set_error_type(client: AsyncTestClient, exporter: InMemorySpanExporter) -> None:
    missing = await client.post("/v1/chat/completions", json={**CHAT, "model": "missing"})
    assert missing.status_code == 404 and missing.headers["x-request-id"]
    server = named(await finished_spans(exporter, "POST /v1/chat/completions"), "POST /v1/chat/completions")
    assert server.attributes is not None and server.attributes["error.type"] == "MODEL_NOT_FOUND"
    exporter.clear()

    async def broken(inputs: list[list[int]], request_id: str) -> None:
        raise ApiError(ErrorCode.ENGINE_ERROR, "The engine for model 'fake-embed' failed to serve the request.")

    engine = client.app_state.scheduler.engine("fake-embed")  # type: ignore[attr-defined]
    engine.embed = broken
    failed = await client.post("/openai/v1/embeddings", json={"model": "fake-embed", "input": "abc"})
    assert failed.status_code == 500
    spans = await finished_spans(exporter, "POST /openai/v1/embeddings")
    server, embeddings = named(spans, "POST /openai/v1/embeddings"), named(spans, "embeddings fake-embed")
    assert embeddings.attributes is not None and server.attributes is not None
    assert embeddings.attributes["error.type"] == server.attributes["error.type"] == "ENGINE_ERROR"
    assert embeddings.status.status_code is StatusCode.ERROR
    assert server.status.status_code is StatusCode.ERROR


async def test_refused_key_marks_the_authenticate_span(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    state = make_state(tmp_path, auth={"static_keys": ["sk-good"]})
    async for client in traced_client(state):
        exporter.clear()
        response = await client.get("/v1/models", headers={"authorization": "Bearer sk-bad"})
        assert response.status_code == 403
        spans = await finished_spans(exporter, "GET /v1/models")
        auth = named(spans, "authenticate")
        assert auth.attributes is not None and auth.attributes["error.type"] == "INVALID_API_KEY"
        assert auth.status.status_code is StatusCode.ERROR


async def test_async_txt2img_and_its_webhook_join_the_submitting_trace(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    state = make_state(tmp_path, tasks={"allow_private_urls": True})
    async with receiver(lambda n: 200) as (url, received):
        async for client in traced_client(state):
            exporter.clear()
            body = {
                "request": {"model_name": "fake-sd", "prompt": "a barn", "width": 128, "height": 128, "steps": 2},
                "extra": {"webhook": {"url": url}},
            }
            submitted = await client.post("/v3/async/txt2img", json=body)
            assert submitted.status_code == 200
            spans = await finished_spans(exporter, "webhook POST")
    [(headers, _)] = received
    server = named(spans, "POST /v3/async/txt2img")
    task = named(spans, "task TXT_TO_IMG")
    generation = named(spans, "image_generation fake-sd")
    webhook = named(spans, "webhook POST")
    trace_id = server.context.trace_id
    assert {span.context.trace_id for span in (task, generation, webhook)} == {trace_id}
    assert parent_of(task) == server.context.span_id
    assert parent_of(generation) == task.context.span_id
    assert parent_of(webhook) == server.context.span_id
    # What the receiver got continues the trace from the webhook span itself.
    version, header_trace, header_span, flags = headers["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1  # W3C, sampled
    assert (int(header_trace, 16), int(header_span, 16)) == (trace_id, webhook.context.span_id)
    assert task.attributes is not None and generation.attributes is not None and webhook.attributes is not None
    assert task.attributes["omniserve.task.id"] == submitted.json()["task_id"]
    assert generation.attributes["omniserve.images.count"] == 1
    assert generation.attributes["omniserve.image.width"] == 128
    assert webhook.attributes["omniserve.webhook.attempts"] == 1
    assert webhook.kind is SpanKind.CLIENT


async def test_access_log_lines(
    client: AsyncTestClient, exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="omniserve.access")
    response = await client.post(
        "/openai/v1/embeddings", json={"model": "fake-embed", "input": "abc"}, headers={"x-request-id": "log-1"}
    )
    assert response.status_code == 200
    server = named(await finished_spans(exporter, "POST /openai/v1/embeddings"), "POST /openai/v1/embeddings")
    unknown = await client.get("/nowhere?token=secret")
    assert unknown.status_code == 404

    [ok, missing] = [record for record in caplog.records if record.name == "omniserve.access"]
    line = json.loads(JsonFormatter().format(ok))
    assert line["method"] == "POST" and line["path"] == "/openai/v1/embeddings" and line["status"] == 200
    assert line["route"] == "/openai/v1/embeddings" and line["duration_ms"] > 0
    assert line["request_id"] == "log-1"
    assert line["trace_id"] == format(server.context.trace_id, "032x")
    assert line["span_id"] == format(server.context.span_id, "016x")
    missed = json.loads(JsonFormatter().format(missing))
    assert missed["status"] == 404 and missed["route"] == "unmatched" and missed["path"] == "/nowhere"
    assert missed["request_id"] == unknown.headers["x-request-id"]
    # Only omniserve's own lines: a client library's request log (httpx at INFO) shows the URL.
    assert not any("secret" in JsonFormatter().format(record) for record in (ok, missing))
