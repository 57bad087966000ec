"""The app under a real HTTP server (uvicorn) on the test's own event loop.

Litestar's AsyncTestClient runs the app on another thread's loop and blocks the caller's
loop for each request; tests that share asyncio state with the app (a lease held by the
test) or measure how long the app's loop is held need the app on the test's loop.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import uvicorn

from engines.base import ModelSpec
from server.app import build_components, create_app
from server.composition import Components
from server.settings import Settings
from tests.fakes import FAKE_SPECS, fake_factory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def serve(
    tmp_path: Path,
    *,
    specs: list[ModelSpec] | None = None,
    factory: Any = fake_factory,
    factories: dict[str, Any] | None = None,
    port: int | None = None,
    **settings: object,
) -> AsyncIterator[tuple[str, Components]]:
    """The base URL of the running app, and its components. ``factory`` builds the fake
    catalog's engines; ``factories`` adds engines of other kinds; ``port``: the port to listen
    on, for settings that must name it (a free one by default)."""
    config = msgspec.convert({"data_dir": str(tmp_path), **settings}, Settings)
    state = build_components(config, specs if specs is not None else FAKE_SPECS, {"fake": factory, **(factories or {})})
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(state), port=port, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:
                await asyncio.sleep(0.05)
            await state.load_task  # type: ignore[misc]
        yield f"http://127.0.0.1:{port}", state
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 30)
