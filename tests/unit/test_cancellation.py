"""CancelOnDisconnect: the one mechanism that cancels a request whose client went away."""

from __future__ import annotations

import asyncio
from typing import Any

from server.cancellation import CancelOnDisconnect

HTTP_SCOPE: dict[str, Any] = {"type": "http", "method": "POST", "path": "/x", "headers": []}


class Connection:
    """The server side of one connection: a body, then (maybe) a disconnect when told."""

    def __init__(self, body_parts: int = 1) -> None:
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for index in range(body_parts):
            self.messages.put_nowait({"type": "http.request", "body": b"x", "more_body": index < body_parts - 1})
        self.sent: list[dict[str, Any]] = []
        self.receives = 0

    async def receive(self) -> dict[str, Any]:
        self.receives += 1
        return await self.messages.get()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def disconnect(self) -> None:
        self.messages.put_nowait({"type": "http.disconnect"})


async def test_work_is_cancelled_when_the_client_leaves_before_the_answer() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        await send({"type": "http.response.start", "status": 200, "headers": []})

    connection = Connection(body_parts=3)
    serving = asyncio.create_task(CancelOnDisconnect(app)(HTTP_SCOPE, connection.receive, connection.send))
    await asyncio.wait_for(started.wait(), 5)
    connection.disconnect()
    await asyncio.wait_for(serving, 5)  # returns quietly: nobody is left to answer
    assert cancelled.is_set()
    assert connection.sent == []


async def test_a_finished_answer_is_not_cancelled_and_the_watcher_stops() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    connection = Connection()
    await asyncio.wait_for(CancelOnDisconnect(app)(HTTP_SCOPE, connection.receive, connection.send), 5)
    assert [message["type"] for message in connection.sent] == ["http.response.start", "http.response.body"]
    await asyncio.sleep(0.01)
    # The watcher (if it got as far as waiting on the connection) was stopped with the request.
    assert connection.receives <= 2
    assert not [task for task in asyncio.all_tasks() if "_RequestWatch._watch" in repr(task.get_coro())]


async def test_a_stream_cut_by_the_client_stops() -> None:
    stopped = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"chunk", "more_body": True})
                await asyncio.sleep(0.01)
        finally:
            stopped.set()

    connection = Connection()
    serving = asyncio.create_task(CancelOnDisconnect(app)(HTTP_SCOPE, connection.receive, connection.send))
    await asyncio.sleep(0.05)
    connection.disconnect()
    await asyncio.wait_for(serving, 5)
    assert stopped.is_set()
    sent = len(connection.sent)
    await asyncio.sleep(0.05)
    assert len(connection.sent) == sent


async def test_after_the_body_the_app_hears_the_disconnect_too() -> None:
    """What Litestar's streaming response does: it listens for the disconnect beside the stream."""
    heard: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        heard.append((await receive())["type"])  # after the answer: the connection's end

    connection = Connection()
    serving = asyncio.create_task(CancelOnDisconnect(app)(HTTP_SCOPE, connection.receive, connection.send))
    await asyncio.sleep(0.05)
    connection.disconnect()
    await asyncio.wait_for(serving, 5)
    assert heard == ["http.disconnect"]


async def test_the_server_stopping_a_request_cancels_its_work_too() -> None:
    cancelled = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    connection = Connection()
    serving = asyncio.create_task(CancelOnDisconnect(app)(HTTP_SCOPE, connection.receive, connection.send))
    await asyncio.sleep(0.05)
    serving.cancel()
    results = await asyncio.gather(serving, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert cancelled.is_set()


async def test_lifespan_and_websocket_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    connection = Connection()
    await CancelOnDisconnect(app)({"type": "lifespan"}, connection.receive, connection.send)
    assert seen == ["lifespan"]
    assert connection.receives == 0
