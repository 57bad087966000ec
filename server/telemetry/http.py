"""Around every HTTP request, errors and unknown routes included: the ``x-request-id``
header, the request's HTTP metrics and its access log line.

A plain ASGI wrapper outside Litestar (and outside the tracing middleware), because
Litestar's own middleware runs only for matched routes.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any, cast

from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

from server.telemetry.instruments import HTTP_ACTIVE, HTTP_DURATION
from server.telemetry.logs import REQUEST_ID

access_log = logging.getLogger("omniserve.access")

REQUEST_ID_HEADER = b"x-request-id"
# What a client may send as its own request id; anything else is replaced, so a log or a
# span attribute never carries an injected newline or a megabyte of text.
_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
# The route label of requests no route matched (404s, probes of random paths).
UNMATCHED_ROUTE = "unmatched"


def request_id_of(scope: Scope) -> str:
    """The client's ``x-request-id`` when it is well formed, else a new random one."""
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            if _VALID_REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return os.urandom(16).hex()


class RequestTelemetry:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        scope["state"]["request_id"] = request_id
        header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        status = 500  # if the app fails without answering, the server answers 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = REQUEST_ID.set(request_id)
        HTTP_ACTIVE.inc()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - started
            HTTP_ACTIVE.dec()
            REQUEST_ID.reset(token)
            self._record(cast(HTTPScope, scope), request_id, status, duration)

    @staticmethod
    def _record(scope: HTTPScope, request_id: str, status: int, duration: float) -> None:
        method = scope["method"] if scope["method"] in _METHODS else "_OTHER"
        # Set by Litestar's router on the scope once a route matched.
        route = cast(dict[str, Any], scope).get("path_template") or UNMATCHED_ROUTE
        HTTP_DURATION.labels(method, route, str(status)).observe(duration)
        if not access_log.isEnabledFor(logging.INFO):
            return
        fields: dict[str, Any] = {
            "method": scope["method"],
            "path": scope["path"],  # never the query: signed file URLs carry their signature there
            "route": route,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
            "request_id": request_id,
        }
        span_context = scope["state"].get("span_context")
        if span_context is not None:
            fields["trace_id"] = format(span_context.trace_id, "032x")
            fields["span_id"] = format(span_context.span_id, "016x")
        access_log.info(
            "%s %s %d %.1f ms request_id=%s",
            scope["method"],
            scope["path"],
            status,
            duration * 1000,
            request_id,
            extra=fields,
        )
