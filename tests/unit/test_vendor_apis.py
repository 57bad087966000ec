"""Novassium and the Stable Diffusion API through the real app over fake engines."""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from PIL import Image

from server.app import create_app
from server.composition import Components
from tests.unit.conftest import make_state

NOVASSIUM = "/api/novassium/v1/generate"
EXAMPLE = {
    "prompt": "The exterior of a beautiful royal mansion",
    "style_preset": "photographic",
    "aspect_ratio": "16:9",
    "samples": 1,
    "negative_prompt": "No buildings or humans",
    "seed": 123456789,
    "output_format": "png",
    "width": 1920,
    "height": 1080,
}


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[tuple[AsyncTestClient, Components, str]]:
    state = make_state(
        tmp_path, vendor={"novassium_steps": 1, "novassium_max_side": 128}, tasks={"allow_private_urls": True}
    )
    _, key = state.keystore.create("tester")
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        yield client, state, key


@pytest.fixture
def image_server() -> Iterator[str]:
    """A loopback HTTP server with a PNG at /init.png, as clients' image hosts are."""
    buffer = io.BytesIO()
    Image.new("RGB", (160, 128), (200, 10, 10)).save(buffer, format="PNG")
    png = buffer.getvalue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/init.png":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def _image(client: AsyncTestClient, url: str) -> Image.Image:
    response = await client.get(url.replace("http://testserver.local", ""))
    assert response.status_code == 200
    return Image.open(io.BytesIO(response.content))


async def test_novassium_example_is_generated_at_the_requested_size(
    app: tuple[AsyncTestClient, Components, str],
) -> None:
    client, state, key = app
    response = await client.post(NOVASSIUM, json=EXAMPLE, headers={"X-API-Key": key})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and body["remaining_credits"] is None and len(body["images"]) == 1
    image = await _image(client, body["images"][0])
    assert image.size == (1920, 1080) and image.format == "PNG"
    job = state.scheduler.engine("fake-sd").last_job  # type: ignore[attr-defined]
    assert (job.width, job.height) == (128, 72) and job.seed == 123456789
    assert job.prompt.startswith("cinematic photo of The exterior") and "No buildings" in job.negative_prompt


@pytest.mark.parametrize(
    ("change", "status", "code", "message"),
    [
        ({"prompt": None}, 400, "missing_parameters", "Prompt is required."),
        ({"width": 63}, 400, "missing_parameters", "Image dimensions must be between 64 and 16,384 pixels."),
        ({"height": 16385}, 400, "missing_parameters", "Image dimensions must be between 64 and 16,384 pixels."),
        ({"samples": 8}, 400, "missing_parameters", "Samples must be between 1 and 7."),
        ({"style_preset": "watercolor"}, 400, "missing_parameters", None),
        ({"seed": 4294967295}, 400, "missing_parameters", "Seed must be between 0 and 4294967294."),
    ],
)
async def test_novassium_validation(
    app: tuple[AsyncTestClient, Components, str], change: dict[str, Any], status: int, code: str, message: str | None
) -> None:
    client, _, key = app
    body = {name: value for name, value in {**EXAMPLE, **change}.items() if value is not None}
    response = await client.post(NOVASSIUM, json=body, headers={"X-API-Key": key})
    assert response.status_code == status
    assert response.json()["success"] is False and response.json()["code"] == code
    if message:
        assert response.json()["message"] == message


async def test_novassium_keys(app: tuple[AsyncTestClient, Components, str]) -> None:
    client, _, _ = app
    missing = await client.post(NOVASSIUM, json=EXAMPLE)
    assert missing.status_code == 401
    assert missing.json() == {"success": False, "message": "API key is missing.", "code": "missing_api_key"}
    invalid = await client.post(NOVASSIUM, json=EXAMPLE, headers={"X-API-Key": "os-nope.nope"})
    assert invalid.status_code == 403 and invalid.json()["message"] == "Invalid API key."


async def test_sdapi_text2img_with_string_numbers(app: tuple[AsyncTestClient, Components, str]) -> None:
    client, _, key = app
    body = {
        "key": key,
        "prompt": "ultra realistic close up portrait",
        "negative_prompt": None,
        "width": "512",
        "height": "256",
        "samples": "2",
        "num_inference_steps": "3",
        "guidance_scale": "7.5",
        "seed": None,
        "safety_checker": "no",
        "webhook": None,
        "track_id": None,
    }
    response = await client.post("/api/v3/text2img", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["status"] == "success" and len(result["output"]) == 2
    assert result["meta"]["W"] == 512 and result["meta"]["H"] == 256 and result["meta"]["n_samples"] == 2
    assert isinstance(result["meta"]["seed"], int)
    assert (await _image(client, result["output"][0])).size == (512, 256)
    fetched = await client.post(f"/api/v3/fetch/{result['id']}", json={"key": key})
    # The same files; each answer signs its URLs afresh, so the expiry may differ by a second.
    assert [url.split("?")[0] for url in fetched.json()["output"]] == [url.split("?")[0] for url in result["output"]]


async def test_sdapi_errors(app: tuple[AsyncTestClient, Components, str]) -> None:
    client, _, key = app
    invalid = await client.post("/api/v3/text2img", json={"key": "wrong", "prompt": "x"})
    assert invalid.status_code == 403
    assert invalid.json()["status"] == "error" and invalid.json()["message"] == "Invalid Api Key"
    assert "tip" in invalid.json()
    missing = await client.post("/api/v3/text2img", json={"key": key, "width": "512"})
    assert missing.status_code == 400
    assert missing.json() == {"status": "error", "message": {"prompt": ["The prompt field is required."]}}
    wide = await client.post("/api/v3/text2img", json={"key": key, "prompt": "x", "width": "2048"})
    assert wide.json()["message"] == {"width": ["The width must be between 128 and 1024."]}
    model = await client.post("/api/v3/text2img", json={"key": key, "prompt": "x", "model_id": "nope"})
    assert model.status_code == 404 and model.json() == {"status": "error", "message": "Model id not found"}
    body = {"key": key, "prompt": "the same request twice", "num_inference_steps": 1}
    assert (await client.post("/api/v3/text2img", json=body)).status_code == 200
    again = await client.post("/api/v3/text2img", json=body)
    assert again.status_code == 429
    assert again.json()["message"] == "Rate limit exceeded" and "30 seconds" in again.json()["tips"]


async def test_sdapi_failed_generation(app: tuple[AsyncTestClient, Components, str]) -> None:
    client, state, key = app

    async def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("device lost")

    state.scheduler.engine("fake-sd").generate = broken  # type: ignore[attr-defined]
    response = await client.post("/api/v3/text2img", json={"key": key, "prompt": "x", "num_inference_steps": 1})
    body = response.json()
    assert body["status"] == "failed" and body["message"] == "Failed, Try Again" and body["output"] == []


async def test_sdapi_processing_then_fetch(app: tuple[AsyncTestClient, Components, str]) -> None:
    client, state, key = app
    state.sdapi.settings.sdapi_wait_s = 0.0  # every job is "slow"
    response = await client.post("/api/v3/text2img", json={"key": key, "prompt": "slow", "track_id": 42})
    body = response.json()
    assert body["status"] == "processing" and body["track_id"] == 42
    assert body["fetch_result"].endswith(f"/api/v3/fetch/{body['id']}")
    for _ in range(300):
        fetched = (await client.post(f"/api/v3/fetch/{body['id']}", json={"key": key})).json()
        if fetched["status"] != "processing":
            break
        await asyncio.sleep(0.01)
    assert fetched["status"] == "success" and len(fetched["output"]) == 1
    other = await client.post("/api/v3/fetch/not-a-task", json={"key": key})
    assert other.status_code == 404 and other.json()["status"] == "error"


async def test_sdapi_img2img_and_inpaint_download_their_images(
    app: tuple[AsyncTestClient, Components, str], image_server: str
) -> None:
    client, _, key = app
    img2img = {"key": key, "prompt": "x", "init_image": f"{image_server}/init.png", "strength": "0.5"}
    result = (await client.post("/api/v3/img2img", json={**img2img, "width": "128", "height": "128"})).json()
    assert result["status"] == "success" and result["meta"]["strength"] == 0.5
    inpaint = {**img2img, "mask_image": f"{image_server}/init.png"}
    result = (await client.post("/api/v3/inpaint", json=inpaint)).json()
    assert result["status"] == "success"
    assert (await _image(client, result["output"][0])).size == (160, 128)
    gone = await client.post("/api/v3/img2img", json={**img2img, "init_image": f"{image_server}/missing.png"})
    assert gone.status_code == 400 and "init_image" in gone.json()["message"]


async def test_sdapi_refuses_private_image_urls_by_default(tmp_path: Path, image_server: str) -> None:
    state = make_state(tmp_path)
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        response = await client.post("/api/v3/img2img", json={"prompt": "x", "init_image": f"{image_server}/init.png"})
    assert response.status_code == 400
    assert "not a public address" in response.json()["message"]["init_image"][0]


async def test_sdapi_image_download_has_one_total_deadline(tmp_path: Path) -> None:
    """A host that trickles its image a byte at a time (each read well within any per-read
    timeout) is cut at vendor.sdapi_fetch_timeout_s: a 400 naming init_image."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: 100000\r\n\r\n")
        try:
            for _ in range(100000):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.2)
        except ConnectionError:
            pass

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    state = make_state(tmp_path, vendor={"sdapi_fetch_timeout_s": 1.0}, tasks={"allow_private_urls": True})
    async with server, AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        started = time.monotonic()
        async with asyncio.timeout(10):  # without a total deadline this would run for hours
            response = await client.post(
                "/api/v3/img2img", json={"prompt": "x", "init_image": f"http://127.0.0.1:{port}/slow.png"}
            )
        elapsed = time.monotonic() - started
    assert response.status_code == 400
    assert "within 1 s" in response.json()["message"]["init_image"][0]
    assert elapsed < 3.0


@pytest.fixture
def webhook_receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback HTTP server that records the JSON bodies POSTed to it."""
    received: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()


async def test_sdapi_webhook_gets_the_sd_body_with_track_id(
    app: tuple[AsyncTestClient, Components, str], webhook_receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    client, _, key = app
    url, received = webhook_receiver
    body = {"key": key, "prompt": "x", "num_inference_steps": 1, "webhook": url, "track_id": 7}
    answer = (await client.post("/api/v3/text2img", json=body)).json()
    assert answer["status"] == "success"
    for _ in range(300):
        if received:
            break
        await asyncio.sleep(0.01)
    assert len(received) == 1
    hook = received[0]
    # The vendor's own shape, not /v3's ASYNC_TASK_RESULT envelope.
    assert "event_type" not in hook
    assert hook["status"] == "success" and hook["id"] == answer["id"] and hook["track_id"] == 7

    # The same files at the server's public address, each URL signed as its body was rendered
    # (the two expiry times may differ by a second), and the webhook's URLs serve them.
    def file_path(url: str) -> str:
        return url.split("/v3/", 1)[1].split("?", 1)[0]

    assert [file_path(url) for url in hook["output"]] == [file_path(url) for url in answer["output"]]
    for url in hook["output"]:
        fetched = await client.get("/v3/" + url.split("/v3/", 1)[1])
        assert fetched.status_code == 200 and fetched.content.startswith(b"\x89PNG")
    assert hook["meta"]["n_samples"] == 1


async def test_sdapi_fetch_after_a_restart(tmp_path: Path) -> None:
    """A job answered "processing" is still fetched after the server restarts: the one that was
    running (past the stop's grace) reports the stop as its failure, the queued one runs to the end."""
    settings: dict[str, Any] = {"vendor": {"sdapi_wait_s": 0.0}, "tasks": {"workers": 1, "drain_grace_s": 0.1}}
    state = make_state(tmp_path, **settings)
    _, key = state.keystore.create("tester")
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        engine = state.scheduler.engine("fake-sd")
        original = engine.generate  # type: ignore[attr-defined]
        started = asyncio.Event()

        async def stuck(job: Any, progress: Any = None) -> Any:
            if progress is not None:
                progress(0.1)  # its work has begun
            started.set()
            await asyncio.Event().wait()

        engine.generate = stuck  # type: ignore[attr-defined]
        running = (await client.post("/api/v3/text2img", json={"key": key, "prompt": "a", "track_id": 1})).json()
        queued = (await client.post("/api/v3/text2img", json={"key": key, "prompt": "b", "track_id": 2})).json()
        assert running["status"] == queued["status"] == "processing"
        await asyncio.wait_for(started.wait(), 5)
        engine.generate = original  # type: ignore[attr-defined]

    again = make_state(tmp_path, **settings)
    async with AsyncTestClient(create_app(again)) as client:
        await again.load_task  # type: ignore[misc]
        failed = (await client.post(f"/api/v3/fetch/{running['id']}", json={"key": key})).json()
        assert failed["status"] == "failed" and failed["track_id"] == 1 and "stopped" in failed["reason"]
        for _ in range(500):
            fetched = (await client.post(f"/api/v3/fetch/{queued['id']}", json={"key": key})).json()
            if fetched["status"] != "processing":
                break
            await asyncio.sleep(0.01)
        assert fetched["status"] == "success" and fetched["track_id"] == 2 and len(fetched["output"]) == 1
