"""Which Host header values this server trusts, and what an open server asks of browsers.

The Host header is the client's to choose. It is trusted only when it names a loopback name,
the address the connection arrived on, the host of ``public_url`` or one of
``auth.allowed_hosts``; for any other value:

- output URLs (signed file links, fetch URLs) use ``public_url``, else the address the
  connection arrived on, so ``Host: evil.test`` cannot point a client's links elsewhere;
- an open server (no keys) refuses the request (403 ACCESS_DENY): a web page that rebinds
  its own name to 127.0.0.1 cannot drive a local server.

An open server also takes JSON bodies only with a JSON content type (415 otherwise): a page
can post ``text/plain`` or a form across sites without a CORS preflight, but not
``application/json``. Form routes keep taking forms (and JSON where they take it too), never
``text/plain``. Probes (/health, /ready) are exempt.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.enums import RequestEncodingType
from litestar.handlers.base import BaseRouteHandler
from litestar.params import BodyKwarg
from litestar.types import Guard, Scope

from schemas.errors import ApiError, ErrorCode
from server.auth import Authenticator
from server.settings import LOOPBACK_HOSTS, Settings

HOSTS_STATE = "omniserve_hosts"
_WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Handlers that answer probes set this opt; they are served whatever the Host.
PROBE_OPT = "probe"


def host_name(header: str) -> str:
    """The name in a Host header, without port or IPv6 brackets, lowercased."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    if header.count(":") == 1:
        return header.partition(":")[0]
    return header


def _host_header(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"host":
            return value.decode("latin-1")
    return None


class HostPolicy:
    def __init__(self, settings: Settings) -> None:
        names = set(LOOPBACK_HOSTS)
        if settings.host not in _WILDCARD_ADDRESSES:
            names.add(host_name(settings.host))
        if settings.public_url:
            names.add((urlsplit(settings.public_url).hostname or "").lower())
        allowed = [host_name(host) for host in settings.auth.allowed_hosts]
        self.any_host = "*" in allowed
        self.names = frozenset(names | set(allowed))
        self.public_url = settings.public_url.rstrip("/")

    def trusted(self, scope: Scope) -> bool:
        header = _host_header(scope)
        if header is None:  # HTTP/1.0 without Host: URLs come from the connection's address anyway
            return True
        name = host_name(header)
        if self.any_host or name in self.names or name.startswith("127."):
            return True
        server = scope.get("server")
        return server is not None and name == host_name(str(server[0]))

    def base_url(self, request: Request[Any, Any, Any]) -> str:
        """The base of the URLs this request's answer carries."""
        if self.trusted(request.scope):
            return str(request.base_url)
        if self.public_url:
            return self.public_url
        server = request.scope.get("server")
        if server is None:  # pragma: no cover - every ASGI server sets it for TCP
            return str(request.base_url)
        address, port = str(server[0]), server[1]
        address = f"[{address}]" if ":" in address else address
        return f"{request.url.scheme}://{address}:{port}{request.scope.get('root_path', '')}"


def output_base_url(request: Request[Any, Any, Any]) -> str:
    """Where this request's output URLs point: the Host the client called when it is trusted,
    else the configured or bound address."""
    policy: HostPolicy = request.app.state[HOSTS_STATE]
    return policy.base_url(request)


_FORM_MEDIA_TYPES = frozenset({RequestEncodingType.MULTI_PART.value, RequestEncodingType.URL_ENCODED.value})


def _body_kind(handler: BaseRouteHandler) -> str | None:
    """ "form" when the handler's body (its ``data``) is a form, "json" for any other body, None
    when it takes no body."""
    data = handler.parsed_fn_signature.parameters.get("data")
    if data is None:
        return None
    definition = data.kwarg_definition
    media_type = definition.media_type if isinstance(definition, BodyKwarg) else None
    return "form" if media_type in (RequestEncodingType.MULTI_PART, RequestEncodingType.URL_ENCODED) else "json"


def is_json_media_type(content_type: str) -> bool:
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


def open_server_guard(authenticator: Authenticator, hosts: HostPolicy) -> Guard:
    async def browser_safe(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        """The app's first guard: on an open server, a trusted Host and JSON bodies as JSON."""
        if handler.opt.get(PROBE_OPT) or not authenticator.is_open():
            return
        if not hosts.trusted(connection.scope):
            name = host_name(_host_header(connection.scope) or "")
            raise ApiError(
                ErrorCode.ACCESS_DENY,
                f"Host '{name}' is not allowed on a server without API keys; add it to auth.allowed_hosts.",
            )
        kind = _body_kind(handler) if connection.scope.get("method") in _BODY_METHODS else None
        if kind is None:
            return
        content_type = connection.headers.get("content-type", "")
        if is_json_media_type(content_type):
            return
        # A form route takes its forms (some also take the same fields as JSON).
        if kind == "form" and content_type.partition(";")[0].strip().lower() in _FORM_MEDIA_TYPES:
            return
        expected = "application/json or multipart/form-data" if kind == "form" else "application/json"
        raise ApiError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"This route takes a body sent as {expected}, not {content_type or 'no content type'}.",
        )

    return browser_safe
