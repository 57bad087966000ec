"""Refuse outbound URLs that point into the server's own network (SSRF guard).

A webhook URL or an input image URL comes from a client, and the server connects to it:
without this check a client could make the server call its own admin ports, a metadata
service (169.254.169.254) or anything else on the private network.

The host is read by httpx's own URL parser (IDNA 2008, as httpx encodes it for the
connection), so the name checked here is byte for byte the name the connection uses: a
name that another IDNA version spells differently ("straße") cannot be checked as one
host and reached as another. The name is resolved once, under the caller's deadline, and
every answer must be public; ``server/outbound.py`` then connects to those vetted
addresses only, so a second DNS answer (rebinding) is never asked for.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from engines.workpools import WorkPool, run_in
from schemas.errors import ApiError, ErrorCode

_SCHEMES = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A submit-time check resolves the webhook host to refuse a private one early; the
# delivery vets it again under its own deadline. This bounds only that early lookup.
SUBMIT_DNS_TIMEOUT_S = 5.0

# A DNS name as httpx leaves it once encoded; anything else (percent escapes, spaces httpx
# quoted) is refused rather than handed to a resolver that may read it its own way.
_HOST_NAME_RE = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Blocking: (ASCII host, port) -> the addresses it resolves to. Runs on the NETWORK pool.
Resolver = Callable[[str, int], Sequence[IPAddress]]
AddressPolicy = Callable[[IPAddress], bool]


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


def system_resolver(host: str, port: int) -> list[IPAddress]:
    # Bytes: the host is already IDNA-encoded ASCII, and Python's str path would run its
    # own (IDNA 2003) codec over it.
    infos = socket.getaddrinfo(host.encode("ascii"), port, type=socket.SOCK_STREAM)
    # An IPv6 link-local answer may carry a zone ("fe80::1%eth0"); the zone is not part
    # of the address.
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


@dataclass(frozen=True)
class Target:
    """A URL whose host has been read as httpx reads it, with the addresses vetted for it."""

    url: httpx.URL
    # ASCII, as httpx hands it to the connection (IDNA-encoded, lowercase, no brackets).
    host: str
    port: int
    # Empty when the check was made without resolving (private URLs allowed).
    addresses: tuple[IPAddress, ...]


def _refuse(message: str, param: str) -> ApiError:
    return ApiError(ErrorCode.INVALID_REQUEST_BODY, message, param=param)


def parse_url(url: str, *, param: str) -> tuple[httpx.URL, str, int]:
    """The URL as httpx reads it, its connection host and port; 400 naming ``param`` when
    it is not an http(s) URL with a host httpx can encode."""
    try:
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii")
    except (httpx.InvalidURL, TypeError, UnicodeError) as exc:
        raise _refuse("the URL is malformed or its host name cannot be encoded", param) from exc
    if parsed.scheme not in _SCHEMES:
        raise _refuse("the URL must use http or https", param)
    if not host:
        raise _refuse("the URL has no host", param)
    if _HOST_NAME_RE.fullmatch(host) is None and not _is_ip_literal(host):
        raise _refuse(f"the host {host!r} is not a valid host name", param)
    return parsed, host, parsed.port or _DEFAULT_PORTS[parsed.scheme]


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def resolve(host: str, port: int, *, param: str, resolver: Resolver) -> tuple[IPAddress, ...]:
    """The addresses of ``host``: the literal itself, or one lookup on the NETWORK pool.
    The caller bounds it (``asyncio.timeout``): a lookup cannot be interrupted, but the
    request stops waiting for it."""
    try:
        return (ipaddress.ip_address(host),)
    except ValueError:
        pass
    try:
        found = tuple(await run_in(WorkPool.NETWORK, resolver, host, port))
    except (OSError, UnicodeError, ValueError) as exc:
        raise _refuse(f"the host {host!r} cannot be resolved", param) from exc
    if not found:
        raise _refuse(f"the host {host!r} cannot be resolved", param)
    return found


async def vet_url(
    url: str,
    *,
    param: str,
    allow_private: bool,
    resolver: Resolver = system_resolver,
    address_allowed: AddressPolicy = is_public_address,
) -> Target:
    """Parse ``url`` and resolve its host once; 400 naming ``param`` unless every address
    passes ``address_allowed`` (``allow_private`` lets any address through, for tests and
    trusted private networks). Callers bound it with their deadline."""
    parsed, host, port = parse_url(url, param=param)
    addresses = await resolve(host, port, param=param, resolver=resolver)
    if not allow_private and not all(address_allowed(address) for address in addresses):
        raise _refuse(f"the host {host!r} is not a public address", param)
    return Target(parsed, host, port, addresses)


async def check_public_url_async(
    url: str,
    *,
    allow_private: bool,
    param: str = "webhook.url",
    timeout_s: float = SUBMIT_DNS_TIMEOUT_S,
    resolver: Resolver = system_resolver,
) -> None:
    """At submission: 400 naming ``param`` unless ``url`` is http(s) and (private URLs not
    being allowed) its host resolves, within ``timeout_s``, only to public addresses. With
    ``allow_private`` only the URL's form is checked, without DNS."""
    if allow_private:
        parse_url(url, param=param)
        return
    try:
        async with asyncio.timeout(timeout_s):
            await vet_url(url, param=param, allow_private=False, resolver=resolver)
    except TimeoutError:
        raise _refuse(f"the host of the URL could not be resolved within {timeout_s:g} s", param) from None
