"""The ASGI responses the OpenAI routes answer with. Handlers return ASGI responses so that
one route can send JSON or server-sent events; the body schemas are declared to OpenAPI
through ``responses=``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import msgspec
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse

from server.sse import SSE_HEADERS

log = logging.getLogger("omniserve.errors")
_encoder = msgspec.json.Encoder()


def json_response(body: msgspec.Struct) -> ASGIResponse:
    return ASGIResponse(body=_encoder.encode(body), media_type="application/json")


def event_stream(events: AsyncIterator[bytes]) -> ASGIResponse:
    return ASGIStreamingResponse(iterator=events, media_type="text/event-stream", headers=SSE_HEADERS)
