"""The uvicorn server: aware of draining, and bounded against slow and greedy clients.

uvicorn itself caps connections (``limit_concurrency``: a request past it answers 503) and idle
keep-alive time, but waits forever for a request's headers and body, and its httptools parser
takes headers of any size. `GuardedHttpProtocol` adds those bounds (``limits.*``):

- the request line and headers must arrive within ``header_timeout_s`` of the connection opening
  or of the request's first byte, and within ``max_header_bytes``: else 408 or 431, and closed;
- the body must arrive within ``body_timeout_s`` of the headers: else the connection is closed
  (the app sees a disconnect, and the request is cancelled).

A client trickling bytes (slowloris) thus holds a connection for a bounded time, and never
holds the event loop: every check is a timer or a length compare.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.routes.health import Readiness
from server.settings import Settings


class DrainingServer(uvicorn.Server):
    """Marks the app as draining the moment a stop signal arrives, so /ready answers 503
    on open connections while in-flight requests finish. ``on_drain`` runs then too (the
    task runner stops starting tasks); it must be safe to call from a signal handler."""

    def __init__(
        self, config: uvicorn.Config, readiness: Readiness, on_drain: Callable[[], None] | None = None
    ) -> None:
        super().__init__(config)
        self.readiness = readiness
        self.on_drain = on_drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.readiness.draining = True
        if self.on_drain is not None:
            self.on_drain()
        super().handle_exit(sig, frame)


def _plain_response(status: bytes, message: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(message)).encode() + b"\r\nconnection: close\r\n\r\n" + message
    )


_TIMEOUT_408 = _plain_response(b"408 Request Timeout", b"Request headers were not received in time.\n")
_TOO_LARGE_431 = _plain_response(b"431 Request Header Fields Too Large", b"Request headers are too large.\n")


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines for headers and body, and a header size cap.
    The limits are class attributes: `guarded_protocol` makes a subclass per configuration."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 120.0
    max_header_bytes: int = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._in_headers = False  # between a request's first byte (or the connection) and its headers' end
        self._in_body = False
        self._header_bytes = 0
        self._header_tail = b""  # the last bytes seen, for a blank line split across reads

    # Headers: from the connection opening (a client that sends nothing is cut too), and from
    # the first byte of each later request on the connection.

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_headers()

    def _start_headers(self) -> None:
        self._in_headers = True
        self._header_bytes = 0
        self._header_tail = b""
        self._arm(self.header_timeout_s, self._headers_too_slow)

    def on_message_begin(self) -> None:
        if not self._in_headers:  # a pipelined request, begun in the previous one's bytes
            self._start_headers()
        super().on_message_begin()

    def data_received(self, data: bytes) -> None:
        if not self._in_headers and not self._in_body:
            self._start_headers()  # the first byte of a keep-alive connection's next request
        if self._in_headers:
            # Only the bytes up to the blank line that ends the headers count: the read that
            # ends them often carries the start of the body too (one write from the client).
            seen = self._header_tail + data
            end = seen.find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._header_tail))
            self._header_tail = seen[-3:]
            if self._header_bytes > self.max_header_bytes:
                self._refuse(_TOO_LARGE_431)
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._in_body = True
        self._arm(self.body_timeout_s, self._body_too_slow)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if self._in_headers:
            self._refuse(_TIMEOUT_408)

    def _body_too_slow(self) -> None:
        # The app owns the response by now: the connection is closed, which it reads as the
        # client leaving.
        self._deadline = None
        if self._in_body and not self.transport.is_closing():
            self.logger.info("closing a connection whose request body was not received in time")
            self.transport.close()

    def _refuse(self, response: bytes) -> None:
        self._in_headers = False
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()


def guarded_protocol(settings: Settings) -> type[GuardedHttpProtocol]:
    limits = settings.limits
    return type(
        "GuardedHttpProtocol",
        (GuardedHttpProtocol,),
        {
            "header_timeout_s": limits.header_timeout_s,
            "body_timeout_s": limits.body_timeout_s,
            "max_header_bytes": limits.max_header_bytes,
        },
    )


def uvicorn_config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    """The server's uvicorn configuration, with the connection limits of ``settings``."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(settings),
        limit_concurrency=settings.limits.max_connections,
        timeout_keep_alive=max(1, round(settings.limits.keep_alive_timeout_s)),
        **options,
    )


def listening_sockets(config: uvicorn.Config, settings: Settings) -> list[socket.socket]:
    """The API's socket and, with ``metrics.access = "port"``, the metrics listener's."""
    sockets = [config.bind_socket()]
    if settings.metrics.access == "port":
        if settings.metrics.port == settings.port:
            raise ValueError("metrics.port must differ from port when metrics.access is 'port'")
        family = socket.AF_INET6 if ":" in settings.metrics.host else socket.AF_INET
        metrics_socket = socket.create_server((settings.metrics.host, settings.metrics.port), family=family)
        metrics_socket.set_inheritable(True)
        sockets.append(metrics_socket)
    return sockets
