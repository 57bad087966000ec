"""The one way the server makes requests to URLs a client chose (webhooks, input images).

Each exchange vets the URL once (``server/netguard.py``: httpx's own host encoding, one DNS
lookup, every address public) and then connects only to those vetted addresses: the
connection's network backend refuses any other host and never resolves the name again,
so a DNS server that answers differently the second time (rebinding) is never asked.
TLS still sends the URL's host name as SNI and verifies the certificate for it.

Every exchange runs under one total deadline (DNS, connect, TLS, request, body), and
downloads stop reading past a byte limit, so a server trickling bytes or sending an
endless body holds neither a request nor memory. Redirects are never followed: the new
location was not vetted. Proxies from the environment are not used either, since they
would connect to the name themselves.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager

import httpcore
import httpx

from schemas.errors import ApiError, ErrorCode
from server.netguard import AddressPolicy, Resolver, Target, is_public_address, system_resolver, vet_url


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects to the target's vetted addresses, in order, and to nothing else."""

    def __init__(self, target: Target, inner: httpcore.AsyncNetworkBackend) -> None:
        self._target = target
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if host != self._target.host or port != self._target.port:
            raise httpcore.ConnectError(f"{host}:{port} was not vetted for this request")
        failure: Exception = httpcore.ConnectError(f"{host} has no vetted address")
        for address in self._target.addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("outbound requests do not use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class PinnedTransport(httpx.AsyncHTTPTransport):
    """An httpx transport whose connections go to one vetted target's addresses only."""

    def __init__(self, target: Target, ssl_context: ssl.SSLContext) -> None:
        super().__init__(verify=ssl_context, trust_env=False)
        # The pool httpx built resolves names itself; this one connects through the pin.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=1,
            max_keepalive_connections=0,
            network_backend=_PinnedBackend(target, httpcore.AnyIOBackend()),
        )


class OutboundHttp:
    """Vetted, pinned, bounded requests to client-chosen URLs.

    ``timeout_s`` and ``max_bytes`` are the server's caps (``tasks.fetch_timeout_s``,
    ``tasks.max_fetch_bytes``); a caller may ask for less, never more. ``resolver``,
    ``address_allowed`` and ``verify`` are there for tests and special deployments.
    """

    def __init__(
        self,
        *,
        allow_private: bool,
        timeout_s: float = 15.0,
        max_bytes: int = 16 * 1024 * 1024,
        resolver: Resolver = system_resolver,
        address_allowed: AddressPolicy = is_public_address,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        self.allow_private = allow_private
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self._resolver = resolver
        self._address_allowed = address_allowed
        # One context for every exchange: building one reads the CA bundle.
        self._ssl_context = verify if verify is not None else httpx.create_ssl_context(trust_env=False)

    async def vet(self, url: str, *, param: str) -> Target:
        """Resolve and check ``url`` once (400 naming ``param``); bound it with a deadline."""
        return await vet_url(
            url,
            param=param,
            allow_private=self.allow_private,
            resolver=self._resolver,
            address_allowed=self._address_allowed,
        )

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        param: str,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """One request to ``url`` over a connection pinned to its vetted addresses; the
        response is not read. Not bounded in time itself: callers wrap it in their deadline
        (``download`` and ``post`` do). Raises ApiError when the URL is refused and httpx's
        errors when the exchange fails."""
        target = await self.vet(url, param=param)
        transport = PinnedTransport(target, self._ssl_context)
        async with (
            httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False, timeout=None) as client,
            client.stream(method, target.url, content=content, headers=headers) as response,
        ):
            yield response

    async def download(
        self,
        url: str,
        *,
        param: str,
        timeout_s: float | None = None,
        max_bytes: int | None = None,
        too_large: Callable[[int], ApiError] | None = None,
    ) -> bytes:
        """The body behind ``url`` (a 200 answer), read within ``timeout_s`` in all and at
        most ``max_bytes`` long; otherwise a 400 naming ``param`` (``too_large(limit)`` for
        a body over the limit, when given)."""
        deadline = min(timeout_s or self.timeout_s, self.timeout_s)
        limit = min(max_bytes or self.max_bytes, self.max_bytes)

        def over_limit() -> ApiError:
            if too_large is not None:
                return too_large(limit)
            return _refused(f"{param} is larger than {limit} bytes.", param)

        chunks: list[bytes] = []
        try:
            async with asyncio.timeout(deadline):
                # identity: a compressed body could expand far past the limit in one chunk.
                headers = {"accept-encoding": "identity"}
                async with self.stream("GET", url, param=param, headers=headers) as response:
                    if response.status_code != 200:
                        raise _refused(f"{param} could not be downloaded: HTTP {response.status_code}.", param)
                    if response.headers.get("content-encoding", "identity").lower() != "identity":
                        raise _refused(f"{param} could not be downloaded: it was sent compressed.", param)
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > limit:
                        raise over_limit()
                    size = 0
                    async for chunk in response.aiter_raw():
                        size += len(chunk)
                        if size > limit:
                            raise over_limit()
                        chunks.append(chunk)
        except TimeoutError:
            raise _refused(f"{param} could not be downloaded within {deadline:g} s.", param) from None
        except httpx.HTTPError:
            raise _refused(f"{param} could not be downloaded.", param) from None
        return b"".join(chunks)

    async def post(self, url: str, content: bytes, headers: Mapping[str, str], *, param: str, timeout_s: float) -> int:
        """POST ``content`` and return the answer's status without reading its body, all
        within ``timeout_s``. Raises ApiError (refused URL), TimeoutError or httpx's errors."""
        async with asyncio.timeout(min(timeout_s, self.timeout_s)):
            async with self.stream("POST", url, param=param, content=content, headers=headers) as response:
                return response.status_code


def _refused(message: str, param: str) -> ApiError:
    return ApiError(ErrorCode.INVALID_REQUEST_BODY, message, param=param)
