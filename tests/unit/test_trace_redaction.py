"""URL credentials in span attributes (server/telemetry/redaction.py)."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from server.telemetry.redaction import RedactingProcessor, redact_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/v3/files/t/0.png?expires=1&signature=abc", "/v3/files/t/0.png?expires=REDACTED&signature=REDACTED"),
        ("http://h:8000/v3/files/t/0.png?signature=abc#top", "http://h:8000/v3/files/t/0.png?signature=REDACTED#top"),
        ("https://u:p@h/x", "https://REDACTED@h/x"),
        ("https://h/x?secret", "https://h/x?REDACTED"),
        ("POST to 'https://h/hook?token=t' failed", "POST to 'https://h/hook?token=REDACTED' failed"),
        ("is this a question?", "is this a question?"),
        ("/v3/files/t/0.png", "/v3/files/t/0.png"),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_every_url_attribute_of_a_span_and_its_events_is_redacted() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(RedactingProcessor(SimpleSpanProcessor(exporter)))
    with provider.get_tracer("t").start_as_current_span("s") as span:
        span.set_attributes(
            {
                "http.url": "http://h/v3/files/a?signature=S1",
                "http.target": "/v3/files/a?signature=S2",
                "url.query": "expires=1&signature=S3",
                "custom.urls": ["https://h/?token=S4", "plain"],
                "http.status_code": 200,
            }
        )
        span.add_event("exception", {"exception.message": "GET https://h/?signature=S5 failed"})
    (finished,) = exporter.get_finished_spans()
    exported = repr(dict(finished.attributes or {})) + repr([dict(e.attributes or {}) for e in finished.events])
    assert not any(secret in exported for secret in ("S1", "S2", "S3", "S4", "S5"))
    assert finished.attributes is not None
    assert finished.attributes["url.query"] == "expires=REDACTED&signature=REDACTED"
    assert finished.attributes["http.status_code"] == 200
    assert finished.context == span.get_span_context()
