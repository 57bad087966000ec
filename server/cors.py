"""Cross-origin browser access (``http.cors_origins``), through Litestar's CORS handling.

Pages of the listed origins may call any route and read its answer; the SDKs' headers
(Authorization, X-API-Key, Content-Type, OpenAI's x-stainless-* and the like) are allowed by
echoing what a preflight asks for, since the set differs between SDKs and their versions.
A preflight from a listed origin is answered before routing and guards: it carries no key
and no body, and the real request that follows meets every check as usual.

A request from an origin that is not listed is served as if CORS were off: without its
Origin header it gets no CORS headers, and a preflight reaches the route's own OPTIONS
answer (a 401 without a key, in the route's error envelope) rather than a bare 400.
"""

from __future__ import annotations

from litestar.config.cors import CORSConfig
from litestar.types import ASGIApp, Receive, Scope, Send

from server.settings import HttpSettings

# Response headers a cross-origin page may read: the request id it quotes in a report, and
# how long to wait after a 429 or 503.
EXPOSED_HEADERS = ["x-request-id", "retry-after", "retry-after-ms"]
# Every method some route takes (the admin API's PUT and DELETE included).
ALLOWED_METHODS = ["GET", "POST", "PUT", "DELETE"]


def cors_config(settings: HttpSettings) -> CORSConfig | None:
    """Litestar's CORS configuration; None (no CORS headers at all) without origins."""
    if not settings.cors_origins:
        return None
    return CORSConfig(
        allow_origins=list(settings.cors_origins),
        allow_methods=list(ALLOWED_METHODS),  # type: ignore[arg-type]
        allow_headers=["*"],
        expose_headers=list(EXPOSED_HEADERS),
        allow_credentials=False,  # keys travel in headers, never in cookies
        max_age=settings.cors_max_age_s,
    )


class UnlistedOriginsAsSameSite:
    """Outside Litestar's CORS handling: an Origin that is not allowed is taken off the request,
    so that request is served as it would be with CORS off."""

    def __init__(self, app: ASGIApp, config: CORSConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            origin = next((value for name, value in scope["headers"] if name == b"origin"), None)
            if origin is not None and not self.config.is_origin_allowed(origin.decode("latin-1")):
                scope = {**scope, "headers": [(name, value) for name, value in scope["headers"] if name != b"origin"]}  # type: ignore[assignment]
        await self.app(scope, receive, send)
