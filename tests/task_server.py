"""An omniserve process on the fake engines, for tests that stop and restart a real server:
``python -m tests.task_server``. Settings come from ``OMNISERVE_*`` variables as for
``omniserve serve``; ``TEST_STEP_S`` makes each image denoising step take that long, so a
test can stop the process while a task is running; ``TEST_TOKEN_S`` does the same for each
generated token of the fake chat model (batch lines)."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, Literal

import uvicorn

from engines.base import ImageGeneration, ImageResult, ModelKind, ModelSpec, ProgressCallback
from server.app import build_components, create_app
from server.data_lock import DataDirLocked
from server.http_server import DrainingServer
from server.settings_loading import load_settings
from tests.fakes import FAKE_SPECS, FakeImageEngine, FakeTextEngine, fake_factory


class SlowImageEngine(FakeImageEngine):
    # One job at a time on its device, as the diffusers engines: other tasks wait for the turn.
    device_serial: Literal[True] = True

    async def generate(self, job: ImageGeneration, progress: ProgressCallback | None = None) -> ImageResult:
        step_s = float(os.environ.get("TEST_STEP_S", "0"))
        for step in range(1, job.steps + 1):
            await asyncio.sleep(step_s)
            if progress is not None:
                progress(step / job.steps)
        return await super().generate(job)


class SlowTextEngine(FakeTextEngine):
    step_delay = float(os.environ.get("TEST_TOKEN_S", "0"))


def factory(spec: ModelSpec) -> Any:
    if spec.kind is ModelKind.IMAGE:
        return SlowImageEngine(spec)
    return SlowTextEngine(spec) if spec.kind is ModelKind.CHAT else fake_factory(spec)


def main() -> int:
    settings = load_settings()
    components = build_components(settings, FAKE_SPECS, {"fake": factory})
    try:
        components.data_lock.acquire()
    except DataDirLocked as exc:
        print(exc, file=sys.stderr)
        return 2
    config = uvicorn.Config(
        create_app(components),
        host=settings.host,
        port=settings.port,
        log_level="info",
        timeout_graceful_shutdown=5,
        lifespan="on",
    )
    DrainingServer(config, components.readiness, on_drain=components.begin_drain).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
