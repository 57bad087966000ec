"""One real omniserve app on fake engines (tests/fuzz/fakeserver.py), served by uvicorn on a
loopback port for the whole session: the fuzz tests reach it over real HTTP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
import uvicorn
from litestar import Litestar

from server.app import build_components, create_app
from server.settings import Settings
from tests.fuzz.fakeserver import FACTORIES, FUZZ_SPECS, SETTINGS

READY_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30


class FuzzServer(msgspec.Struct):
    base_url: str
    data_dir: Path
    app: Litestar

    @property
    def document_url(self) -> str:
        return f"{self.base_url}/schema/openapi.json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzServer]:
    """The app, listening on a free loopback port until the session ends."""
    data_dir = tmp_path_factory.mktemp("fuzz-data")
    port = free_port()
    settings = msgspec.convert({**SETTINGS, "data_dir": str(data_dir), "port": port}, Settings)
    app = create_app(build_components(settings, FUZZ_SPECS, FACTORIES))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="fuzz-server", daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base_url, thread)
        yield FuzzServer(base_url=base_url, data_dir=data_dir, app=app)
    finally:
        server.should_exit = True
        thread.join(timeout=STOP_TIMEOUT_S)


def _wait_ready(base_url: str, thread: threading.Thread) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if not thread.is_alive():
            pytest.fail("the fuzz server stopped before it was ready")
        try:
            if httpx.get(f"{base_url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the fuzz server was not ready in {READY_TIMEOUT_S} s")
        time.sleep(0.05)
