"""The /v3 image client harness the image benchmarks share: an omniserve process, its readiness,
N concurrent txt2img clients that follow each task by polling or by webhook and download its
images, and the job every side runs."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine import free_port  # noqa: E402

from engines.base import ImageGeneration  # noqa: E402

MODEL = "demo-sd"
PROMPT = "a lighthouse on a cliff at dusk, oil painting"
SAMPLER = "Euler a"  # what a /v3 request without sampler_name gets; named on both sides
GUIDANCE = 7.5
IMAGE_TYPE = "png"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WARMUP_SEED = 1_000_000  # warm-up jobs draw other seeds than the measured ones


def job_for(size: int, steps: int, seed: int) -> ImageGeneration:
    return ImageGeneration(
        prompt=PROMPT, width=size, height=size, steps=steps, guidance_scale=GUIDANCE, seed=seed, sampler=SAMPLER
    )


def toml_value(value: Any) -> str:
    """A TOML literal for a JSON-like value (inline tables for dicts)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_value(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, bool | int | float | str):
        # JSON's string escapes are valid in TOML basic strings; true/false and numbers read alike.
        return msgspec.json.encode(value).decode()
    raise TypeError(f"no TOML literal for {type(value).__name__}")


class Server:
    def __init__(self, command: list[str], port: int, log_path: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.log = open(log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(command, stdout=self.log, stderr=self.log, cwd=ROOT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


async def wait_ready(server: Server, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"server exited with {server.process.returncode}; see {server.log_path}")
            try:
                async with session.get(f"{server.url}/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError(f"server not ready in {timeout_s:.0f} s; see {server.log_path}")


class WebhookSink:
    """A loopback HTTP server that receives task webhooks: `wait(task_id)` gives a task's result
    without polling (results that arrive before anyone waits are kept)."""

    def __init__(self) -> None:
        self._results: dict[str, dict[str, Any]] = {}
        self._waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> WebhookSink:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/hook", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        body = msgspec.json.decode(await request.read())
        result = body.get("payload", body)  # the /v3 envelope, or the bare result
        task_id = result["task"]["task_id"]
        waiter = self._waiters.pop(task_id, None)
        if waiter is None:
            self._results[task_id] = result
        elif not waiter.done():
            waiter.set_result(result)
        return web.Response(text="ok")

    async def wait(self, task_id: str, timeout_s: float = 600.0) -> dict[str, Any]:
        if task_id in self._results:
            return self._results.pop(task_id)
        waiter = self._waiters.setdefault(task_id, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(waiter, timeout_s)


async def one_task(
    session: aiohttp.ClientSession,
    url: str,
    size: int,
    steps: int,
    seed: int,
    poll_s: float,
    sink: WebhookSink | None = None,
) -> int:
    """Submit one txt2img task, follow it to the end (its webhook with `sink`, else polling every
    `poll_s`), download its images; returns the image count."""
    body = {
        "request": {
            "model_name": MODEL,
            "prompt": PROMPT,
            "width": size,
            "height": size,
            "steps": steps,
            "seed": seed,
            "guidance_scale": GUIDANCE,
            "sampler_name": SAMPLER,
            "image_num": 1,
        },
        "extra": {"response_image_type": IMAGE_TYPE},
    }
    if sink is not None:
        body["extra"]["webhook"] = {"url": sink.url}
    async with session.post(f"{url}/v3/async/txt2img", json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"txt2img answered {response.status}: {await response.text()}")
        task_id = msgspec.json.decode(await response.read())["task_id"]
    while sink is None:
        async with session.get(f"{url}/v3/async/task-result", params={"task_id": task_id}) as response:
            if response.status != 200:
                raise RuntimeError(f"task-result answered {response.status}: {await response.text()}")
            result = msgspec.json.decode(await response.read())
        status = result["task"]["status"]
        if status == "TASK_STATUS_SUCCEED":
            break
        if status == "TASK_STATUS_FAILED":
            raise RuntimeError(f"task {task_id} failed: {result['task']['reason']}")
        await asyncio.sleep(poll_s)
    if sink is not None:
        result = await sink.wait(task_id)
        if result["task"]["status"] != "TASK_STATUS_SUCCEED":
            raise RuntimeError(f"task {task_id} failed: {result['task'].get('reason')}")
    for image in result["images"]:
        async with session.get(image["image_url"]) as response:
            if response.status != 200:
                raise RuntimeError(f"image download answered {response.status}")
            if not (await response.read()).startswith(PNG_MAGIC):
                raise RuntimeError("downloaded image is no PNG")
    return len(result["images"])


async def run_clients(
    url: str,
    size: int,
    steps: int,
    jobs: int,
    concurrency: int,
    poll_s: float,
    seed0: int,
    sink: WebhookSink | None = None,
) -> tuple[int, float]:
    """`jobs` tasks shared by `concurrency` clients; returns the images downloaded and the seconds from the
    first submit to the last download. With `sink`, clients wait for webhooks instead of polling."""
    seeds = iter(range(seed0, seed0 + jobs))
    images = 0
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            nonlocal images
            for seed in seeds:  # one shared iterator: each job is taken by exactly one client
                # Await first, add after: `images += await ...` reads `images` before the await
                # and would drop the counts other clients add meanwhile.
                done = await one_task(session, url, size, steps, seed, poll_s, sink)
                images += done

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(min(concurrency, jobs))))
        elapsed = time.perf_counter() - started
    return images, elapsed
