"""Who may read /metrics (``metrics.access``) and, for "port", the listener it is served on.

"key" (the default): an admin key, like /admin; on an open server, anyone who may call it.
"open": anyone who reaches the API port. "port": only on ``metrics.host:metrics.port``, a
listener of its own that serves /metrics and nothing else, for a scraper on a private network.
"""

from __future__ import annotations

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.response.base import ASGIResponse
from litestar.types import ASGIApp, Guard, Receive, Scope, Send

from schemas.errors import ApiError, ErrorCode
from server.auth import Authenticator, key_guard, require_admin
from server.settings import MetricsSettings

METRICS_PATH = "/metrics"


def _listener_port(scope: Scope) -> int | None:
    server = scope.get("server")
    return server[1] if server is not None else None


def metrics_guards(settings: MetricsSettings, authenticator: Authenticator) -> list[Guard]:
    if settings.access == "open":
        return []
    if settings.access == "key":
        return [key_guard(authenticator), require_admin]
    port = settings.port

    async def on_metrics_listener(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        if _listener_port(connection.scope) != port:
            raise ApiError(ErrorCode.API_NOT_FOUND, "No such API route.")

    return [on_metrics_listener]


_NOT_FOUND = ASGIResponse(body=b"not found\n", status_code=404, media_type="text/plain")


class MetricsListenerOnlyServesMetrics:
    """On the metrics listener, every path but /metrics is 404, so the API is not reachable
    through the scraper's network."""

    def __init__(self, app: ASGIApp, port: int) -> None:
        self.app = app
        self.port = port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _listener_port(scope) == self.port and scope["path"] != METRICS_PATH:
            await _NOT_FOUND(scope, receive, send)
            return
        await self.app(scope, receive, send)
