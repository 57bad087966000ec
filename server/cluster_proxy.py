"""Forward a request for a model that runs only on other replicas to one that runs it
(settings' ``cluster.proxy_to_peers``).

An ASGI wrapper, so no route knows of it: it keeps a copy of the request body as the app reads
it and holds back the app's answer when the error handler says (`server.cluster.ask_peer`) the
request was refused for a model served elsewhere. The scheduler refuses such a request before
anything waits or loads (a credit reservation made first is refunded with the refusal), so
sending it again elsewhere repeats no work; its request windows count it on both replicas. Then the
request goes, body and headers (Authorization included) as received, to a live replica running
the model, and that replica's status, headers and body come back as they arrive, chunk by chunk
(a streamed chat's server-sent events too).

A forwarded request carries ``X-Omniserve-Proxied-By`` (the forwarding replica's id); a request
that has it is never forwarded again, so two replicas whose views disagree cannot bounce a
request between them: the second answers with its own refusal. A replica that does not accept
the connection is skipped for the next one running the model; when none does, the answer is
503 SERVICE_NOT_AVAILABLE in the family's envelope.
"""

from __future__ import annotations

import logging

import httpx
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

from schemas.errors import ApiError, ErrorCode
from server.cluster import PEER_REQUEST_SCOPE, ClusterCatalog, PeerRequest, Replica
from server.errors import error_body, retry_after_headers

log = logging.getLogger("omniserve.cluster")

PROXIED_HEADER = "x-omniserve-proxied-by"

# Hop-by-hop headers (RFC 9110 7.6.1) and those the client of each hop sets itself.
_REQUEST_DROPPED = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host"}
    | {"content-length", PROXIED_HEADER}
)
_RESPONSE_DROPPED = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "te", "trailer", "transfer-encoding", "upgrade"}
    | {"date", "server"}  # the ASGI server writes its own
)


def _has_header(scope: Scope, name: bytes) -> bool:
    return any(key.lower() == name for key, _ in scope.get("headers", ()))


class PeerProxy:
    def __init__(
        self, app: ASGIApp, cluster: ClusterCatalog, *, connect_timeout_s: float, read_timeout_s: float
    ) -> None:
        self.app = app
        self.cluster = cluster
        timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        # No redirects followed, no environment proxies: the answer is the peer's own.
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _has_header(scope, PROXIED_HEADER.encode()):
            await self.app(scope, receive, send)
            return
        peer_request = PeerRequest()
        scope[PEER_REQUEST_SCOPE] = peer_request  # type: ignore[literal-required]
        body = bytearray()
        body_read = False
        held: list[Message] = []

        async def recording_receive() -> ReceiveMessage:
            nonlocal body_read
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
                body_read = not message.get("more_body", False)
            return message

        async def holding_send(message: Message) -> None:
            if held or (message["type"] == "http.response.start" and peer_request.model is not None):
                held.append(message)
                return
            await send(message)

        await self.app(scope, recording_receive, holding_send)
        if not held or peer_request.model is None:
            return
        peers = [replica for replica in self.cluster.serving(peer_request.model) if replica.id != self.cluster.here.id]
        if not peers:
            for answer in held:  # the app's own answer: no live replica runs the model
                await send(answer)
            return
        while not body_read:  # the rest of a body the app stopped reading
            received = await recording_receive()
            if received["type"] != "http.request":
                return  # the client left
        for peer in peers:
            if await self._forward(peer, scope, bytes(body), send):
                return
        reason = f"No server running the model '{peer_request.model}' could be reached; try again later."
        await self._refuse(scope, send, reason)

    async def _refuse(self, scope: Scope, send: Send, message: str) -> None:
        error = ApiError(ErrorCode.SERVICE_NOT_AVAILABLE, message, retry_after=self.cluster.retry_after_s or 1.0)
        headers = {"content-type": "application/json", **retry_after_headers(error)}
        await send(
            {
                "type": "http.response.start",
                "status": error.status,
                "headers": [(key.encode(), value.encode()) for key, value in headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": error_body(scope["path"], error), "more_body": False})

    async def _forward(self, peer: Replica, scope: Scope, body: bytes, send: Send) -> bool:
        """Send the request to `peer` and its answer to the client; False when the peer could
        not be reached (it never had the request: the next one may take it)."""
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        url = peer.url + path.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")
        headers = [
            (key.decode("latin-1"), value.decode("latin-1"))
            for key, value in scope.get("headers", ())
            if key.decode("latin-1").lower() not in _REQUEST_DROPPED
        ]
        headers.append((PROXIED_HEADER, self.cluster.here.id))
        request = self._client.build_request(str(scope.get("method", "GET")), url, headers=headers, content=body)
        try:
            response = await self._client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            log.warning("peer %s (%s) not reached for %s: %s", peer.id, peer.url, scope["path"], exc)
            return False
        except httpx.TransportError as exc:
            # It may have begun the work: not sent to another replica, which would do it twice.
            log.warning("peer %s (%s) did not answer %s: %s", peer.id, peer.url, scope["path"], exc)
            await self._refuse(scope, send, "The server running the model did not answer in time; try again later.")
            return True
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (key, value)
                        for key, value in response.headers.raw
                        if key.decode("latin-1").lower() not in _RESPONSE_DROPPED
                    ],
                }
            )
            # Raw: the bytes as the peer sent them (still compressed, if it compressed them).
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except httpx.TransportError as exc:
            # The answer has begun: it cannot be replaced. Left unfinished, the client sees a
            # broken response rather than a complete-looking short one.
            log.warning("peer %s (%s) broke off its answer to %s: %s", peer.id, peer.url, scope["path"], exc)
        finally:
            await response.aclose()
        return True
