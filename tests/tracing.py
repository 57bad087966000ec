"""One global tracer provider for the test process, whose spans go wherever the running test
points them: the app's spans use the global API, and a process may install only one."""

from __future__ import annotations

from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider


class ForwardingProcessor(SpanProcessor):
    def __init__(self) -> None:
        self.target: SpanProcessor | None = None

    def on_start(self, span: Span, parent_context: context.Context | None = None) -> None:
        if self.target is not None:
            self.target.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if self.target is not None:
            self.target.on_end(span)

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.target.force_flush(timeout_millis) if self.target is not None else True


FORWARD = ForwardingProcessor()
PROVIDER = TracerProvider(resource=Resource.create({"service.name": "omniserve-test"}))
PROVIDER.add_span_processor(FORWARD)
trace.set_tracer_provider(PROVIDER)
