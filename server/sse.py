"""Server-sent events: framing, and the one wrapper that ends any stream cleanly.

Errors found before the first byte are ordinary error responses. After it, the status is
already 200, so `guarded_events` turns any exception into the family's final error event
(OpenAI's SDKs raise on a chunk holding ``error``) and then sends the family's terminator.
A stream that must wait for a model takes its lease before the first byte
(``server.capabilities.started_streams``), so a refusal is still an ordinary error response.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import msgspec

from schemas.errors import ApiError
from server.errors import anthropic_error_body, as_api_error, openai_error_body

log = logging.getLogger("omniserve.errors")

SSE_DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_encoder = msgspec.json.Encoder()


def sse_event(payload: msgspec.Struct) -> bytes:
    return b"data: " + _encoder.encode(payload) + b"\n\n"


def named_event(name: str, payload: msgspec.Struct) -> bytes:
    """An event with an ``event:`` line (Anthropic's streams name every event)."""
    return b"event: " + name.encode() + b"\ndata: " + _encoder.encode(payload) + b"\n\n"


def anthropic_error_event(error: ApiError) -> bytes:
    """An error after an Anthropic stream began: its ``error`` event, which its SDKs raise."""
    return b"event: error\ndata: " + anthropic_error_body(error) + b"\n\n"


def openai_error_event(error: ApiError) -> bytes:
    """An error after the stream began, in OpenAI's shape."""
    return b"data: " + openai_error_body(error) + b"\n\n"


async def guarded_events(
    events: AsyncIterator[bytes],
    *,
    done: bytes | None = SSE_DONE,
    error_event: Callable[[ApiError], bytes] = openai_error_event,
) -> AsyncIterator[bytes]:
    """``events``, then ``done``; an exception on the way becomes ``error_event`` (an
    unexpected one is logged with its traceback and reaches the client as a generic 500)."""
    try:
        async for event in events:
            yield event
    except Exception as exc:
        error = as_api_error(exc)
        if error.status >= 500 and not isinstance(exc, ApiError):
            log.exception("a stream failed after it began", exc_info=exc)
        yield error_event(error)
    finally:
        # Closed early (the client left): end the source now, in this task, so that its
        # engine call unwinds before the lease is given back.
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()
    if done is not None:
        yield done
