"""One cancellation mechanism for every route: a request whose client goes away is cancelled.

Once a request's body has been read, `CancelOnDisconnect` watches the connection; when the
client disconnects before the response is complete, it cancels the request's task.
Cancellation travels down to the engine call: a lease is released, vLLM aborts the request,
a diffusers or Whisper worker thread stops at its next step, a charge keeps only what was
produced. Routes need nothing of their own (vLLM marks each handler with
``with_cancellation``; here no handler can forget it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

_DISCONNECT: ReceiveMessage = {"type": "http.disconnect"}


class CancelOnDisconnect:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The request's own task is the one cancelled: no task of its own for the app, so a
        # request costs no extra scheduling hop before its handler runs.
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - an ASGI server always runs a request in a task
            raise RuntimeError("a request outside a task")
        watch = _RequestWatch(receive)
        watch.on_disconnect = task.cancel
        try:
            await self.app(scope, watch.receive, watch.wrap_send(send))
        except asyncio.CancelledError:
            if watch.cancelled_request and task.uncancel() == 0:
                return  # the client left and its work was cancelled: nobody to answer
            raise  # the server itself is stopping this request
        finally:
            watch.close()


class _RequestWatch:
    """The connection's messages as the app sees them, plus a watcher for the disconnect.

    Until the body is complete, ``receive`` passes messages through (keeping the server's
    flow control). After that, one watcher task owns the connection's ``receive``; the app's
    later calls (a streaming response listens for the disconnect too) get its result.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._body_done = False
        self._response_done = False
        self._watcher: asyncio.Task[ReceiveMessage] | None = None
        self._closed = False
        self.disconnected = False
        self.cancelled_request = False
        self.on_disconnect: Callable[[], object] | None = None

    async def receive(self) -> ReceiveMessage:
        if not self._body_done:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._body_done = self.disconnected = True
            elif not message.get("more_body", False):
                self._body_done = True
                self._start_watching()
            return message
        if self._watcher is None:
            return _DISCONNECT
        return await asyncio.shield(self._watcher)

    def _start_watching(self) -> None:
        self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> ReceiveMessage:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                break
        self.disconnected = True
        if not self._response_done and not self._closed and self.on_disconnect is not None:
            self.cancelled_request = True
            self.on_disconnect()
        return message

    def wrap_send(self, send: Send) -> Send:
        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self._response_done = True
            await send(message)

        return tracked_send

    def close(self) -> None:
        self._closed = True
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
