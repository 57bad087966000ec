"""Requests to client-chosen URLs (server/outbound.py) against real sockets on loopback:
the host as httpx encodes it, one DNS answer pinned for the connection, one total
deadline, a byte limit, no redirects, TLS verified for the URL's name."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from schemas.errors import ApiError, ErrorCode
from server.netguard import IPAddress, parse_url
from server.outbound import OutboundHttp

LOCAL = ipaddress.ip_address("127.0.0.1")
OTHER_LOCAL = ipaddress.ip_address("127.0.0.2")
# Global, so the SSRF guard lets it through; nothing in the tests answers there.
PUBLIC = ipaddress.ip_address("1.1.1.1")

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Listener:
    def __init__(self) -> None:
        self.connections = 0


async def _read_head(reader: asyncio.StreamReader) -> dict[str, str]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if line)}
    await reader.readexactly(int(headers.get("content-length", "0")))
    return headers


def answering(status: int, body: bytes = b"", extra: str = "") -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        head = f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\nconnection: close\r\n{extra}\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        writer.close()

    return handle


@asynccontextmanager
async def listening(
    handler: Handler, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[int, Listener]]:
    listener = Listener()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        listener.connections += 1
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port, ssl=tls)
    async with server:
        yield server.sockets[0].getsockname()[1], listener


def resolver_of(answers: dict[str, list[IPAddress]], asked: list[str]) -> Callable[[str, int], list[IPAddress]]:
    def resolve(host: str, port: int) -> list[IPAddress]:
        asked.append(host)
        if host not in answers:
            raise OSError("unknown host")
        return answers[host]

    return resolve


def test_the_host_is_read_as_httpx_encodes_it_idna_2008() -> None:
    # IDNA 2003 (Python's codec) maps "ß" to "ss"; httpx connects to the IDNA 2008 name.
    assert parse_url("http://straße.example/x", param="p")[1] == "xn--strae-oqa.example"
    assert parse_url("http://[::1]:81/", param="p")[1:] == ("::1", 81)
    for url in ("http://☃.example/", "http://a b.example/", "ftp://8.8.8.8/", "http:///x"):
        with pytest.raises(ApiError) as info:
            parse_url(url, param="init_image")
        assert info.value.status == 400 and info.value.param == "init_image"


async def test_an_idna_host_is_resolved_and_reached_under_its_2008_name() -> None:
    asked: list[str] = []
    hosts: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hosts.append((await _read_head(reader))["host"])
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    async with listening(handle) as (port, listener):
        outbound = OutboundHttp(allow_private=True, resolver=resolver_of({"xn--strae-oqa.test": [LOCAL]}, asked))
        assert await outbound.download(f"http://straße.test:{port}/img", param="init_image") == b"ok"
    assert asked == ["xn--strae-oqa.test"]  # never "strasse.test"
    assert hosts == [f"xn--strae-oqa.test:{port}"] and listener.connections == 1


async def test_a_rebinding_resolver_is_asked_once_and_the_private_answer_never_contacted() -> None:
    asked: list[str] = []
    answers = iter([[PUBLIC], [LOCAL]])

    def rebinding(host: str, port: int) -> list[IPAddress]:
        asked.append(host)
        return next(answers)

    async with listening(answering(200, b"secret")) as (port, listener):
        outbound = OutboundHttp(allow_private=False, resolver=rebinding)
        with pytest.raises(ApiError) as info:
            await outbound.download(f"http://rebind.test:{port}/", param="init_image", timeout_s=1.0)
    assert info.value.status == 400 and info.value.param == "init_image"
    assert asked == ["rebind.test"]
    assert listener.connections == 0


async def test_the_connection_goes_to_the_first_vetted_answer_not_a_later_one() -> None:
    asked: list[str] = []
    answers = iter([[LOCAL], [OTHER_LOCAL]])

    def rebinding(host: str, port: int) -> list[IPAddress]:
        asked.append(host)
        return next(answers)

    async with (
        listening(answering(200, b"vetted")) as (port, vetted),
        listening(answering(200, b"rebound"), host="127.0.0.2", port=port) as (_, rebound),
    ):
        # Only 127.0.0.1 counts as allowed here, standing in for a public address.
        outbound = OutboundHttp(allow_private=False, resolver=rebinding, address_allowed=lambda a: a == LOCAL)
        assert await outbound.download(f"http://rebind.test:{port}/", param="p") == b"vetted"
    assert asked == ["rebind.test"]
    assert (vetted.connections, rebound.connections) == (1, 0)


async def test_a_trickling_server_is_cut_at_the_total_deadline() -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
        for _ in range(1000):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.2)

    async with listening(trickle) as (port, _):
        outbound = OutboundHttp(allow_private=True)
        started = time.monotonic()
        with pytest.raises(ApiError) as info:
            await outbound.download(f"http://127.0.0.1:{port}/", param="init_image", timeout_s=1.0)
        elapsed = time.monotonic() - started
    assert info.value.status == 400 and info.value.param == "init_image"
    assert "within 1 s" in info.value.message
    assert 0.9 <= elapsed < 2.0


async def test_a_webhook_post_to_a_trickling_receiver_ends_at_the_deadline() -> None:
    async def trickle_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        for byte in b"HTTP/1.1 200 OK\r\nx-slow: " + b"y" * 1000:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.2)

    async with listening(trickle_head) as (port, _):
        outbound = OutboundHttp(allow_private=True)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await outbound.post(f"http://127.0.0.1:{port}/hook", b"{}", {}, param="webhook.url", timeout_s=1.0)
    assert time.monotonic() - started < 2.0


async def _endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")  # no length: read until close
    chunk = b"x" * 65536
    for _ in range(1024):  # 64 MiB unless the client hangs up
        writer.write(chunk)
        await writer.drain()


async def test_an_oversized_body_is_cut_at_the_limit_with_flat_memory() -> None:
    limit = 1024 * 1024
    async with listening(_endless) as (port, _):
        outbound = OutboundHttp(allow_private=True)
        tracemalloc.start()
        try:
            with pytest.raises(ApiError) as info:
                await outbound.download(f"http://127.0.0.1:{port}/", param="init_image", max_bytes=limit)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert info.value.status == 400 and info.value.code is ErrorCode.INVALID_REQUEST_BODY
    assert str(limit) in info.value.message
    assert peak < 4 * limit


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    async with listening(answering(200, b"x" * 2000)) as (port, _):
        outbound = OutboundHttp(allow_private=True, max_bytes=1000)
        with pytest.raises(ApiError, match="larger than 1000 bytes"):
            # The server's cap wins over a caller asking for more.
            await outbound.download(f"http://127.0.0.1:{port}/", param="init_image", max_bytes=5000)


async def test_a_redirect_to_a_private_address_is_not_followed() -> None:
    async with listening(answering(200, b"internal"), host="127.0.0.2") as (private_port, private):
        location = f"location: http://127.0.0.2:{private_port}/\r\n"
        async with listening(answering(302, extra=location)) as (port, _):
            outbound = OutboundHttp(
                allow_private=False,
                resolver=resolver_of({"public.test": [LOCAL]}, []),
                address_allowed=lambda a: a == LOCAL,
            )
            with pytest.raises(ApiError, match="HTTP 302"):
                await outbound.download(f"http://public.test:{port}/", param="init_image")
            assert await outbound.post(f"http://public.test:{port}/", b"{}", {}, param="p", timeout_s=2.0) == 302
    assert private.connections == 0


def _tls_contexts(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for ``name`` signed by a fresh CA, and a
    client context trusting only that CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey, ca: bool
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])
    ca = certificate("test ca", ca_key, ca_name, ca_key, True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = certificate(name, leaf_key, ca_name, ca_key, False)
    pem = serialization.Encoding.PEM
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (tmp_path / "leaf.key").write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    client = ssl.create_default_context(cadata=ca.public_bytes(pem).decode())
    return server, client


async def test_tls_sends_the_url_name_as_sni_and_verifies_the_certificate_for_it(tmp_path: Path) -> None:
    server_tls, client_tls = _tls_contexts(tmp_path, "hook.test")
    seen_sni: list[str | None] = []
    server_tls.sni_callback = lambda sock, name, context: seen_sni.append(name)  # type: ignore[assignment,misc,func-returns-value]
    answers: dict[str, list[IPAddress]] = {"hook.test": [LOCAL], "other.test": [LOCAL]}
    async with listening(answering(200, b"tls"), tls=server_tls) as (port, _):
        outbound = OutboundHttp(allow_private=True, resolver=resolver_of(answers, []), verify=client_tls)
        assert await outbound.download(f"https://hook.test:{port}/", param="p") == b"tls"
        # The same address under a name the certificate does not cover is refused.
        with pytest.raises(ApiError, match="could not be downloaded"):
            await outbound.download(f"https://other.test:{port}/", param="p", timeout_s=2.0)
    assert seen_sni[0] == "hook.test"
