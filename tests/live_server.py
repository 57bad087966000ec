"""The app served by the real uvicorn configuration (server/http_server.py) on a localhost
port, in a thread of its own, for tests that need real sockets."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import uvicorn

from server.app import build_components, create_app
from server.composition import Components
from server.http_server import listening_sockets, uvicorn_config
from server.settings import Settings
from tests.fakes import FAKE_SPECS, fake_factory

START_TIMEOUT_S = 30.0


class LiveServer(msgspec.Struct):
    host: str
    port: int
    components: Any

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


@contextmanager
def live_server(tmp_path: Path, **settings: Any) -> Iterator[LiveServer]:
    """The fake catalog served on 127.0.0.1 (a free port unless ``port`` is given)."""
    config_settings = msgspec.convert({"data_dir": str(tmp_path), "port": 0, **settings}, Settings)
    components: Components = build_components(config_settings, FAKE_SPECS, {"fake": fake_factory})
    config = uvicorn_config(create_app(components), config_settings, log_level="warning", lifespan="on")
    sockets = listening_sockets(config, config_settings)
    port = sockets[0].getsockname()[1]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the live server did not start")
        time.sleep(0.02)
    try:
        yield LiveServer(host="127.0.0.1", port=port, components=components)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        for sock in sockets:
            sock.close()
