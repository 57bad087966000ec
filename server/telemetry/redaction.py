"""Keep credentials that travel in URLs out of exported spans.

Signed file URLs carry their signature in the query (``?expires=&signature=``), webhook
URLs often a token, and a URL's userinfo a password; instrumentations record full URLs
(``http.url``, ``url.full``, ``http.target``, ``url.query``) and exception messages quote
them. Every span passes through ``RedactingProcessor`` on its way to the exporter, so
each string attribute, of the span and of its events, is cleaned in this one place
whichever library set it: query values become ``REDACTED`` (parameter names stay, for
reading traces) and so does userinfo.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor
from opentelemetry.util.types import Attributes

REDACTED = "REDACTED"
# A URL (scheme://...) anywhere in a text, or a value that is a path ("/v3/files/...?"):
# group 1 is everything before the query, group 2 the query (up to a fragment or the end).
_URL_WITH_QUERY = re.compile(r"((?:\b[A-Za-z][A-Za-z0-9+.-]*://|^/)[^\s?#'\"<>]*)\?([^\s#'\"<>]*)")
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#@'\"<>]*@")


def redact_query(query: str) -> str:
    """``a=1&b=2`` -> ``a=REDACTED&b=REDACTED``; a part without a name is redacted whole."""
    if not query:
        return query
    parts = []
    for part in query.split("&"):
        name, equals, _ = part.partition("=")
        parts.append(f"{name}={REDACTED}" if equals else REDACTED)
    return "&".join(parts)


def redact_text(text: str) -> str:
    """``text`` with the query values and userinfo of every URL in it redacted."""
    if "?" not in text and "@" not in text:
        return text
    text = _URL_WITH_QUERY.sub(lambda match: f"{match[1]}?{redact_query(match[2])}", text)
    return _USERINFO.sub(rf"\1{REDACTED}@", text)


def redact_attributes(key_values: Attributes) -> dict[str, Any] | None:
    """Redacted copies of span or event attributes; None when nothing needed changing."""
    if not key_values:
        return None
    changed = False
    cleaned: dict[str, Any] = {}
    for key, value in key_values.items():
        new: Any = value
        if key == "url.query" or key.endswith(".query"):
            new = redact_query(value) if isinstance(value, str) else value
        elif isinstance(value, str):
            new = redact_text(value)
        elif isinstance(value, Sequence) and value and isinstance(value[0], str):
            new = tuple(redact_text(item) if isinstance(item, str) else item for item in value)
        changed = changed or new != value
        cleaned[key] = new
    return cleaned if changed else None


def redacted_span(span: ReadableSpan) -> ReadableSpan:
    """``span``, or a copy with its URL credentials redacted."""
    attributes = redact_attributes(span.attributes)
    events: list[Event] = []
    events_changed = False
    for event in span.events:
        cleaned = redact_attributes(event.attributes)
        if cleaned is None:
            events.append(event)
        else:
            events_changed = True
            events.append(Event(event.name, cleaned, event.timestamp))
    if attributes is None and not events_changed:
        return span
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes if attributes is not None else span.attributes,
        events=events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class RedactingProcessor(SpanProcessor):
    """Hands finished spans to ``inner`` (the exporting processor) with URL credentials
    redacted."""

    def __init__(self, inner: SpanProcessor) -> None:
        self.inner = inner

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        self.inner.on_end(redacted_span(span))

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)
