"""Refuse outbound URLs that point into the server's own network (SSRF guard).

A webhook URL comes from a client, and the server POSTs to it: without this check a
client could make the server call its own admin ports, a metadata service
(169.254.169.254) or anything else on the private network. Every address the host
resolves to must be public, because the HTTP client may connect to any of them.

Resolution and connection are separate steps, so a hostile DNS server could still
answer differently the second time; callers re-check before each attempt to narrow
that window, and deployments that need more put webhooks behind an egress proxy.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from engines.workpools import WorkPool, run_in
from schemas.errors import ApiError, ErrorCode

_SCHEMES = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public_address(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv6 form that carries an IPv4 address reaches that IPv4 address.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return is_public_address(embedded)
    # is_global alone misses multicast (224.0.0.0/4 counts as global), hence the list.
    return address.is_global and not (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def _resolve(host: str, port: int) -> list[IPAddress]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # An IPv6 link-local answer may carry a zone ("fe80::1%eth0"); the zone is not part
    # of the address.
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def check_public_url(url: str, *, allow_private: bool, param: str = "webhook.url") -> None:
    """Raise ApiError (400) unless ``url`` is http(s) and its host resolves only to public
    addresses. ``allow_private`` checks the scheme only (tests, trusted private networks).

    Blocks on DNS: from async code use ``check_public_url_async``.
    """

    def refuse(message: str) -> ApiError:
        return ApiError(ErrorCode.INVALID_REQUEST_BODY, message, param=param)

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise refuse("the URL is malformed") from exc
    if parts.scheme not in _SCHEMES:
        raise refuse("the URL must use http or https")
    host = parts.hostname
    if not host:
        raise refuse("the URL has no host")
    if allow_private:
        return
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = _resolve(host, port or _DEFAULT_PORTS[parts.scheme])
        except (OSError, UnicodeError, ValueError) as exc:
            raise refuse(f"the host {host!r} cannot be resolved") from exc
    if not addresses or not all(is_public_address(address) for address in addresses):
        raise refuse(f"the host {host!r} is not a public address")


async def check_public_url_async(url: str, *, allow_private: bool, param: str = "webhook.url") -> None:
    """``check_public_url`` with DNS in a worker thread, so the event loop never waits on it."""
    await run_in(WorkPool.NETWORK, check_public_url, url, allow_private=allow_private, param=param)
