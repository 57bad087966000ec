from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from server.outbound import OutboundHttp
from server.tasks.webhooks import WebhookSender

Received = list[tuple[dict[str, str], bytes]]


@asynccontextmanager
async def receiver(answer: Callable[[int], int | None]) -> AsyncIterator[tuple[str, Received]]:
    """A minimal HTTP/1.1 server on loopback; ``answer(n)`` gives the status for the n-th
    request, or None to never answer (it then waits until the client hangs up)."""
    received: Received = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")[1:]
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        received.append((headers, body))
        status = answer(len(received))
        if status is None:
            await reader.read()  # returns when the sender gives up and closes
        else:
            writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode())
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}/hook?token=secret", received


async def test_retries_after_a_5xx_and_delivers_the_envelope() -> None:
    payload = b'{"task": {"task_id": "t1", "status": "TASK_STATUS_SUCCEED"}, "images": []}'
    async with receiver(lambda n: 500 if n == 1 else 200) as (url, received):
        sender = WebhookSender(OutboundHttp(allow_private=True), backoff_s=0.01)
        assert await sender.deliver(url, payload, headers={"x-trace": "abc"})
    assert len(received) == 2
    headers, body = received[-1]
    assert headers["content-type"] == "application/json"
    assert headers["x-trace"] == "abc"
    assert json.loads(body) == {"event_type": "ASYNC_TASK_RESULT", "payload": json.loads(payload)}
    assert (sender.delivered, sender.failed) == (1, 0)


async def test_a_silent_receiver_times_out_and_gives_up() -> None:
    async with receiver(lambda n: None) as (url, received):
        sender = WebhookSender(OutboundHttp(allow_private=True), timeout_s=0.2, max_retries=2, backoff_s=0.01)
        started = time.monotonic()
        assert not await sender.deliver(url, b"{}")
        elapsed = time.monotonic() - started
    assert len(received) == 3  # the first attempt and two retries
    assert 0.6 <= elapsed < 2.0
    assert (sender.delivered, sender.failed) == (0, 1)


async def test_private_targets_are_never_contacted() -> None:
    async with receiver(lambda n: 200) as (url, received):
        sender = WebhookSender(OutboundHttp(allow_private=False), max_retries=1, backoff_s=0.01)
        assert not await sender.deliver(url, b"{}")
    assert received == []
    assert sender.failed == 1


async def test_a_rebinding_name_is_delivered_to_its_vetted_address_only() -> None:
    # Each attempt resolves once and connects to what it vetted: the name is never looked up
    # a second time by the HTTP client, where a rebinding server could answer 127.0.0.1.
    asked: list[str] = []
    answers = iter(["127.0.0.1", "127.0.0.2"])

    def rebinding(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        asked.append(host)
        return [ipaddress.ip_address(next(answers))]

    async with receiver(lambda n: 200) as (url, received):
        port = url.split(":")[2].split("/")[0]
        outbound = OutboundHttp(
            allow_private=False, resolver=rebinding, address_allowed=lambda a: str(a) == "127.0.0.1"
        )
        sender = WebhookSender(outbound, max_retries=0)
        assert await sender.deliver(f"http://hooks.test:{port}/hook", b"{}")
    assert asked == ["hooks.test"] and len(received) == 1
    assert received[0][0]["host"] == f"hooks.test:{port}"
