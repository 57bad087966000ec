"""Slow and greedy clients against the real HTTP server, over real sockets."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.live_server import LiveServer, live_server

HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 64
# How much later than its deadline a cut may be seen (timer, scheduling, a loaded machine).
SLACK_S = 1.5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(
        tmp_path_factory.mktemp("slow-clients"),
        limits={
            "header_timeout_s": HEADER_TIMEOUT_S,
            "body_timeout_s": BODY_TIMEOUT_S,
            "max_connections": MAX_CONNECTIONS,
            "keep_alive_timeout_s": 1.0,
            "max_header_bytes": 8192,
        },
    ) as running:
        yield running


async def _closed_after(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, trickle: bytes
) -> tuple[float, bytes]:
    """Sends ``trickle`` one byte a second until the server answers or closes; the seconds
    that took, and what it sent."""
    started = time.monotonic()
    for byte in trickle:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            break
        try:
            data = await asyncio.wait_for(reader.read(65536), timeout=1.0)
        except TimeoutError:
            continue
        except ConnectionError:
            return time.monotonic() - started, b""
        rest = b""
        if data:
            rest = await asyncio.wait_for(reader.read(), timeout=5)
        return time.monotonic() - started, data + rest
    return time.monotonic() - started, b""


async def _connect(server: LiveServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(server.host, server.port)


async def test_headers_sent_a_byte_a_second_are_cut_at_the_deadline(server: LiveServer) -> None:
    reader, writer = await _connect(server)
    endless = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
    took, answer = await _closed_after(reader, writer, endless)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert took <= HEADER_TIMEOUT_S + SLACK_S


async def test_a_silent_connection_is_closed(server: LiveServer) -> None:
    reader, writer = await _connect(server)
    started = time.monotonic()
    answer = await asyncio.wait_for(reader.read(), timeout=HEADER_TIMEOUT_S + SLACK_S)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started <= HEADER_TIMEOUT_S + SLACK_S


async def test_a_trickled_body_is_cut_at_the_deadline(server: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="omniserve.errors")
    reader, writer = await _connect(server)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    await writer.drain()
    took, answer = await _closed_after(reader, writer, b'{"model": "' + b"x" * 900)
    writer.close()
    assert answer == b""  # closed: the app saw the client leave
    assert took <= BODY_TIMEOUT_S + SLACK_S
    await asyncio.sleep(0.5)
    # The client leaving is not logged as a server error.
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert any("left before sending its whole body" in record.getMessage() for record in caplog.records)


async def test_oversized_headers_are_refused(server: LiveServer) -> None:
    reader, writer = await _connect(server)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431")


async def test_a_large_body_sent_with_its_headers_in_one_write_is_not_taken_for_headers(server: LiveServer) -> None:
    body = b'{"model": "fake-chat", "messages": [{"role": "user", "content": "' + b"a" * 100_000 + b'"}]}'
    reader, writer = await _connect(server)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    status = answer.split(b"\r\n", 1)[0]
    assert status.startswith(b"HTTP/1.1 ") and b"431" not in status, status


async def test_connections_past_the_cap_are_refused(server: LiveServer) -> None:
    held = [await _connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
            assert (await client.get("/health")).status_code == 503
    finally:
        for _, writer in held:
            writer.close()
    await asyncio.sleep(0.3)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
        assert (await client.get("/health")).status_code == 200


async def test_health_stays_responsive_under_a_slowloris_attack(server: LiveServer) -> None:
    attackers = MAX_CONNECTIONS // 2
    stop = asyncio.Event()
    cut = 0

    async def slowloris(index: int) -> None:
        nonlocal cut
        while not stop.is_set():
            reader, writer = await _connect(server)
            if index % 2:
                request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
            else:
                writer.write(b"POST /v3/async/txt2img HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 500\r\n\r\n")
                request = b"{" + b" " * 400
            await _closed_after(reader, writer, request)
            writer.close()
            cut += 1

    tasks = [asyncio.create_task(slowloris(index)) for index in range(attackers)]
    latencies: list[float] = []
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
            deadline = time.monotonic() + HEADER_TIMEOUT_S * 2 + 1
            while time.monotonic() < deadline:
                started = time.monotonic()
                response = await client.get("/health", headers={"Connection": "close"})
                latencies.append(time.monotonic() - started)
                assert response.status_code == 200
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    worst = max(latencies)
    print(f"\n/health under {attackers} slow connections: {len(latencies)} probes, worst {worst * 1000:.0f} ms")
    assert cut >= attackers  # every attacker was cut at least once
    assert worst < 0.5


async def test_idle_keep_alive_connections_are_closed(server: LiveServer) -> None:
    reader, writer = await _connect(server)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    first = await asyncio.wait_for(reader.readuntil(b'"ok"}'), timeout=5)
    assert first.startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), timeout=5) == b""
    writer.close()
    assert time.monotonic() - started < 1.0 + SLACK_S
