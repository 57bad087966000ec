"""Small steps of a request as child spans (authentication, ...), with ``error.type`` set to
the API error code when the step refuses the request."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode

from server.telemetry.genai import error_type

_tracer = trace.get_tracer("omniserve")


@contextmanager
def step(name: str) -> Iterator[Span]:
    with _tracer.start_as_current_span(name, record_exception=False, set_status_on_exception=False) as span:
        try:
            yield span
        except Exception as exc:
            if span.is_recording():
                span.set_attribute("error.type", error_type(exc))
                span.set_status(StatusCode.ERROR, type(exc).__qualname__)
            raise
