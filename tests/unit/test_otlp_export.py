"""Spans leave over real OTLP/HTTP: a receiver on loopback decodes what the exporter sends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from server.app import create_app
from server.settings import TelemetrySettings
from server.telemetry.tracing import build_tracer_provider, resolve, span_exporter
from tests.tracing import FORWARD
from tests.unit.conftest import make_state


@asynccontextmanager
async def otlp_receiver() -> AsyncIterator[tuple[str, list[tuple[str, ExportTraceServiceRequest]]]]:
    """A collector stand-in: accepts POST /v1/traces, keeps (path, decoded request)."""
    received: list[tuple[str, ExportTraceServiceRequest]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = head.decode().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines if line)}
        body = await reader.readexactly(int(headers["content-length"]))
        assert headers["content-type"] == "application/x-protobuf"
        received.append((request_line.split()[1], ExportTraceServiceRequest.FromString(body)))
        answer = ExportTraceServiceResponse().SerializeToString()
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\n"
            + f"content-length: {len(answer)}\r\nconnection: close\r\n\r\n".encode()
            + answer
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", received


def plain(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind != "array_value" else [plain(item) for item in value.array_value.values]


async def test_spans_arrive_over_otlp_http(tmp_path: Path) -> None:
    async with otlp_receiver() as (endpoint, received):
        settings = TelemetrySettings(exporter="otlp-http", endpoint=endpoint, service_name="omniserve-otlp-test")
        # The server spans through a provider built from the settings; the GenAI child spans
        # (global API) through the same exporter kind, to the same receiver.
        provider = build_tracer_provider(settings, {}, version="0.1.0")
        assert provider is not None
        exporter = span_exporter(resolve(settings, {}))
        assert exporter is not None
        FORWARD.target = BatchSpanProcessor(exporter)
        try:
            state = make_state(tmp_path)
            async with AsyncTestClient(create_app(state, tracer_provider=provider)) as client:
                await state.load_task  # type: ignore[misc]
                response = await client.post(
                    "/openai/v1/embeddings",
                    json={"model": "fake-embed", "input": "hello"},
                    headers={"x-request-id": "otlp-1"},
                )
                assert response.status_code == 200
            # Flushing blocks on the export while the receiver runs on this loop: in a thread.
            assert await asyncio.to_thread(provider.force_flush)
            assert await asyncio.to_thread(FORWARD.force_flush)
        finally:
            FORWARD.target = None
            await asyncio.to_thread(provider.shutdown)

    assert {path for path, _ in received} == {"/v1/traces"}
    spans: dict[str, tuple[dict[str, Any], Any]] = {}
    for _, request in received:
        for resource_spans in request.resource_spans:
            resource = {a.key: plain(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans[span.name] = (resource, span)
    server_resource, server = spans["POST /openai/v1/embeddings"]
    assert server_resource["service.name"] == "omniserve-otlp-test"
    assert server_resource["service.version"] == "0.1.0"
    server_attributes = {a.key: plain(a.value) for a in server.attributes}
    assert server_attributes["omniserve.request_id"] == "otlp-1"
    assert server_attributes["http.route"] == "/openai/v1/embeddings"
    _, embeddings = spans["embeddings fake-embed"]
    assert embeddings.trace_id == server.trace_id and embeddings.parent_span_id == server.span_id
    attributes = {a.key: plain(a.value) for a in embeddings.attributes}
    assert attributes["gen_ai.operation.name"] == "embeddings"
    assert attributes["gen_ai.usage.input_tokens"] == 5


async def test_url_query_values_and_userinfo_never_leave_in_spans(tmp_path: Path) -> None:
    """A signed file URL's signature reaches the server span's URL attributes; what the
    collector receives has every query value redacted."""
    async with otlp_receiver() as (endpoint, received):
        settings = TelemetrySettings(exporter="otlp-http", endpoint=endpoint, service_name="omniserve-otlp-test")
        provider = build_tracer_provider(settings, {}, version="0.1.0")
        assert provider is not None
        try:
            state = make_state(tmp_path)
            async with AsyncTestClient(create_app(state, tracer_provider=provider)) as client:
                await state.load_task  # type: ignore[misc]
                response = await client.get("/v3/files/t1/0.png?expires=4102444800&signature=s3cr3t-sig")
                assert response.status_code in (403, 404)
            with provider.get_tracer("test").start_as_current_span("outbound") as span:
                span.set_attribute("url.full", "https://user:pa55@hooks.example/cb?token=t0ken#frag")
                span.add_event("exception", {"exception.message": "failed for url 'https://h.example/x?key=k3y'"})
            assert await asyncio.to_thread(provider.force_flush)
        finally:
            await asyncio.to_thread(provider.shutdown)

    exported = str([request for _, request in received])
    for secret in ("s3cr3t-sig", "4102444800", "pa55", "t0ken", "k3y"):
        assert secret not in exported
    spans = {
        span.name: {a.key: plain(a.value) for a in span.attributes}
        for _, request in received
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    }
    server = next(attributes for name, attributes in spans.items() if name.startswith("GET"))
    urls = [value for value in server.values() if isinstance(value, str) and "signature" in value]
    assert urls and all("signature=REDACTED" in value for value in urls)
    assert spans["outbound"]["url.full"] == "https://REDACTED@hooks.example/cb?token=REDACTED#frag"
