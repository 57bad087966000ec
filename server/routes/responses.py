"""The ASGI responses the OpenAI routes answer with. Handlers return ASGI responses so that
one route can send JSON or server-sent events; the body schemas are declared to OpenAPI
through ``responses=``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import anyio
import msgspec
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import Receive, Scope, Send

from schemas.errors import ApiError
from server.errors import as_api_error, openai_error_body, retry_after_headers
from server.sse import SSE_HEADERS, Admitted

log = logging.getLogger("omniserve.errors")
_encoder = msgspec.json.Encoder()


def json_response(body: msgspec.Struct) -> ASGIResponse:
    return ASGIResponse(body=_encoder.encode(body), media_type="application/json")


def event_stream(events: AsyncIterator[bytes] | Admitted) -> ASGIResponse:
    if isinstance(events, AsyncIterator):
        return ASGIStreamingResponse(iterator=events, media_type="text/event-stream", headers=SSE_HEADERS)
    return _AdmittedEventStream(events)


async def _no_events() -> AsyncIterator[bytes]:
    return
    yield  # an async generator that yields nothing


class _AdmittedEventStream(ASGIStreamingResponse):
    """Server-sent events sent once admitted: the lease is taken before the status line and
    given back after the last byte, all within this call, so no way out of it keeps it."""

    __slots__ = ("admission",)

    def __init__(self, admission: Admitted) -> None:
        super().__init__(iterator=_no_events(), media_type="text/event-stream", headers=SSE_HEADERS)
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with AsyncExitStack() as held:
            try:
                self.iterator = await held.enter_async_context(self.admission.admitted())
            except Exception as exc:
                error = as_api_error(exc)
                if error.status >= 500 and not isinstance(exc, ApiError):
                    log.exception("admission of a stream failed", exc_info=exc)
                refusal = ASGIResponse(
                    body=openai_error_body(error),
                    status_code=error.status,
                    media_type="application/json",
                    headers=retry_after_headers(error),
                )
                await refusal(scope, receive, send)
                return
            await super().__call__(scope, receive, send)

    async def _stream(self, send: Send) -> None:
        try:
            await super()._stream(send)
        finally:
            # Cancelled between two events (the client left while one was being sent): the
            # events are closed here, in the task that ran them, before the lease is released.
            with anyio.CancelScope(shield=True):
                close = getattr(self.iterator, "aclose", None)
                if close is not None:
                    await close()
