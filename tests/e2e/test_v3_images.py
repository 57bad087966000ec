"""Novita /v3 image tasks against a running omniserve: the official novita-client, webhooks, errors."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from novita_client import NovitaClient
from novita_client.proto import Img2ImgV3ControlNetUnit, Txt2ImgV3HiresFix, Txt2ImgV3Refiner
from PIL import Image

from tests.e2e.conftest import RunningServer

pytestmark = pytest.mark.e2e


class WebhookReceiver:
    """A loopback HTTP server that records POSTed JSON; the first ``fail_first`` answers are 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.events: list[dict[str, Any]] = []
        self.attempts = 0
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts += 1
                if receiver.attempts <= receiver.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.events.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int = 1, timeout_s: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.events

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver()
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def novita(server: RunningServer) -> NovitaClient:
    return NovitaClient(server.api_key, base_url=server.base_url)


def _auth(server: RunningServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_key}"}


def _poll(server: RunningServer, task_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, Any] = httpx.get(
            f"{server.base_url}/v3/async/task-result", params={"task_id": task_id}, headers=_auth(server)
        ).json()
        if body["task"]["status"] in ("TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not finish")


def test_txt2img_with_the_novita_sdk_is_deterministic(novita: NovitaClient) -> None:
    def generate() -> Any:
        return novita.txt2img_v3(
            model_name="demo-sd",
            prompt="a lighthouse at dusk",
            image_num=2,
            width=128,
            height=128,
            steps=2,
            seed=1234,
            response_image_type="png",
        )

    first = generate()
    assert first.task.status.value == "TASK_STATUS_SUCCEED"
    assert first.task.task_type == "TXT_TO_IMG"
    assert str(first.extra.seed) == "1234"
    images = [Image.open(io.BytesIO(base64.b64decode(data))) for data in first.images_encoded]
    assert [(image.format, image.size) for image in images] == [("PNG", (128, 128))] * 2
    second = generate()
    assert second.images_encoded == first.images_encoded


def test_random_seed_is_drawn_and_reported(server: RunningServer) -> None:
    body = {"request": {"model_name": "demo-sd", "prompt": "x", "width": 128, "height": 128, "steps": 1, "seed": -1}}
    task_id = httpx.post(f"{server.base_url}/v3/async/txt2img", json=body, headers=_auth(server)).json()["task_id"]
    result = _poll(server, task_id)
    assert int(result["extra"]["seed"]) >= 0
    assert result["extra"]["debug_info"]["complete_time_ms"] >= result["extra"]["debug_info"]["submit_time_ms"]
    assert result["images"][0]["image_url_ttl"] == "3600"


def test_webhook_delivery_after_a_failing_first_answer(server: RunningServer) -> None:
    hook = WebhookReceiver(fail_first=1)
    try:
        body = {
            "extra": {"response_image_type": "jpeg", "webhook": {"url": hook.url}},
            "request": {"model_name": "demo-sd", "prompt": "a boat", "width": 128, "height": 128, "steps": 1},
        }
        response = httpx.post(f"{server.base_url}/v3/async/txt2img", json=body, headers=_auth(server))
        assert response.status_code == 200
        task_id = response.json()["task_id"]
        events = hook.wait(1, timeout_s=90)
        assert hook.attempts >= 2
        event = events[0]
        assert event["event_type"] == "ASYNC_TASK_RESULT"
        payload = event["payload"]
        assert payload["task"]["task_id"] == task_id
        assert payload["task"]["status"] == "TASK_STATUS_SUCCEED"
        image = httpx.get(payload["images"][0]["image_url"])
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(image.content)).format == "JPEG"
    finally:
        hook.close()


def test_webhook_test_mode_sends_the_mock_status(server: RunningServer, receiver: WebhookReceiver) -> None:
    body = {
        "extra": {
            "webhook": {
                "url": receiver.url,
                "test_mode": {"enabled": True, "return_task_status": "TASK_STATUS_FAILED"},
            }
        },
        "request": {"model_name": "demo-sd", "prompt": "never generated", "width": 128, "height": 128},
    }
    task_id = httpx.post(f"{server.base_url}/v3/async/txt2img", json=body, headers=_auth(server)).json()["task_id"]
    event = receiver.wait(1, timeout_s=20)[0]
    assert event["payload"]["task"]["task_id"] == task_id
    assert event["payload"]["task"]["status"] == "TASK_STATUS_FAILED"
    assert event["payload"]["images"] == []


def test_altered_or_expired_urls_are_refused(server: RunningServer) -> None:
    body = {"request": {"model_name": "demo-sd", "prompt": "x", "width": 128, "height": 128, "steps": 1}}
    task_id = httpx.post(f"{server.base_url}/v3/async/txt2img", json=body, headers=_auth(server)).json()["task_id"]
    url = _poll(server, task_id)["images"][0]["image_url"]
    assert httpx.get(url).status_code == 200
    tampered = url.replace("signature=", "signature=0")
    refused = httpx.get(tampered)
    assert refused.status_code == 403
    assert refused.json()["reason"] == "ACCESS_DENY"
    expired = httpx.get(url.split("expires=")[0] + "expires=1&" + url.split("&", 1)[1])
    assert expired.status_code == 403


def test_bad_input_in_the_v3_envelope(server: RunningServer) -> None:
    def submit(request: dict[str, Any], extra: dict[str, Any] | None = None) -> httpx.Response:
        body = {"request": {"model_name": "demo-sd", "prompt": "x", **request}, "extra": extra or {}}
        return httpx.post(f"{server.base_url}/v3/async/txt2img", json=body, headers=_auth(server))

    too_small = submit({"width": 64})
    assert too_small.status_code == 400
    assert too_small.json()["reason"] == "INVALID_IMAGE_SIZE"
    assert too_small.json()["code"] == 400
    sampler = submit({"sampler_name": "Nope"})
    assert sampler.status_code == 400 and sampler.json()["metadata"]["param"] == "request.sampler_name"
    wrong_type = submit({"steps": "many"})
    assert wrong_type.status_code == 400 and wrong_type.json()["reason"] == "INVALID_REQUEST_BODY"
    unknown = submit({"model_name": "no-such-model"})
    assert unknown.status_code == 404 and unknown.json()["reason"] == "MODEL_NOT_FOUND"
    lora = submit({"loras": [{"model_name": "missing-lora", "strength": 0.5}]})
    assert lora.status_code == 400 and lora.json()["metadata"]["param"] == "request.loras"
    missing = httpx.get(f"{server.base_url}/v3/async/task-result", params={"task_id": "nope"}, headers=_auth(server))
    assert missing.status_code == 404 and missing.json()["reason"] == "TASK_NOT_FOUND"
    no_key = httpx.get(f"{server.base_url}/v3/async/task-result", params={"task_id": "nope"})
    assert no_key.status_code == 401 and no_key.json()["reason"] == "MISSING_API_KEY"


def _png(color: tuple[int, int, int], size: tuple[int, int] = (136, 128)) -> Image.Image:
    return Image.new("RGB", size, color)


def test_img2img_and_inpainting_with_the_novita_sdk(novita: NovitaClient) -> None:
    source = _png((200, 30, 30))
    buffer = io.BytesIO()
    source.save(buffer, format="PNG")
    image_b64 = base64.b64encode(buffer.getvalue()).decode()
    result = novita.img2img_v3(
        model_name="demo-sd",
        input_image=image_b64,
        prompt="a red square, painted",
        image_num=1,
        width=128,
        height=128,
        steps=2,
        strength=0.6,
        seed=5,
        response_image_type="png",
    )
    assert result.task.task_type == "IMG_TO_IMG"
    produced = Image.open(io.BytesIO(base64.b64decode(result.images_encoded[0])))
    assert produced.size == (128, 128)

    mask = Image.new("L", (136, 128), 0)
    mask.paste(255, (32, 32, 96, 96))
    mask_buffer = io.BytesIO()
    mask.save(mask_buffer, format="PNG")
    inpainted = novita.inpainting(
        model_name="demo-sd",
        image=image_b64,
        mask=base64.b64encode(mask_buffer.getvalue()).decode(),
        prompt="a blue circle",
        image_num=1,
        sampler_name="Euler a",
        steps=2,
        guidance_scale=7.5,
        seed=9,
    )
    assert inpainted.task.task_type == "INPAINTING"
    # The input's 136x128 is kept (a multiple of 8).
    assert Image.open(io.BytesIO(base64.b64decode(inpainted.images_encoded[0]))).size == (136, 128)


def test_not_an_image_is_refused(server: RunningServer) -> None:
    body = {
        "request": {
            "model_name": "demo-sd",
            "prompt": "x",
            "image_base64": base64.b64encode(b"definitely not an image").decode(),
        }
    }
    response = httpx.post(f"{server.base_url}/v3/async/img2img", json=body, headers=_auth(server))
    assert response.status_code == 400
    assert response.json()["reason"] == "INVALID_IMAGE_FORMAT"
    assert response.json()["metadata"]["param"] == "request.image_base64"
    body["request"]["image_base64"] = "%%% not base64 %%%"
    response = httpx.post(f"{server.base_url}/v3/async/img2img", json=body, headers=_auth(server))
    assert response.status_code == 400 and response.json()["reason"] == "INVALID_IMAGE_FORMAT"


def test_upscale_task_over_http(server: RunningServer) -> None:
    buffer = io.BytesIO()
    _png((40, 120, 200), size=(48, 30)).save(buffer, format="PNG")
    body = {
        "extra": {"response_image_type": "webp"},
        "request": {
            "model_name": "demo-upscaler",
            "image_base64": base64.b64encode(buffer.getvalue()).decode(),
            "scale_factor": 2.5,
        },
    }
    response = httpx.post(f"{server.base_url}/v3/async/upscale", json=body, headers=_auth(server))
    assert response.status_code == 200, response.text
    result = _poll(server, response.json()["task_id"])
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED", result["task"]["reason"]
    assert result["task"]["task_type"] == "UPSCALE"
    [image] = result["images"]
    downloaded = httpx.get(image["image_url"])
    assert downloaded.status_code == 200 and downloaded.headers["content-type"] == "image/webp"
    with Image.open(io.BytesIO(downloaded.content)) as upscaled:
        assert (upscaled.format, upscaled.size) == ("WEBP", (120, 75))
    body["request"]["scale_factor"] = 4.5
    refused = httpx.post(f"{server.base_url}/v3/async/upscale", json=body, headers=_auth(server))
    assert refused.status_code == 400 and refused.json()["metadata"]["param"] == "request.scale_factor"


def test_models_v3_with_the_novita_sdk(novita: NovitaClient) -> None:
    models = novita.models_v3(refresh=True)
    by_name = {model.sd_name_in_api: model for model in models}
    assert by_name["demo-sd"].type.name == "checkpoint"
    assert by_name["demo-lora"].type.name == "lora"
    assert by_name["demo-embedding"].type.name == "textualinversion"
    assert by_name["demo-sdxl"].base_model == "SDXL 1.0"
    assert by_name["demo-vae"].type.name == "vae"
    assert by_name["demo-controlnet"].type.name == "controlnet"


def _decoded(result: Any) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in result.images_encoded]


def test_hires_fix_refiner_and_sd_vae_with_the_novita_sdk(novita: NovitaClient) -> None:
    hires = novita.txt2img_v3(
        model_name="demo-sd",
        prompt="a lighthouse at dusk",
        image_num=1,
        width=128,
        height=128,
        steps=2,
        seed=21,
        sd_vae="demo-vae",
        hires_fix=Txt2ImgV3HiresFix(target_width=192, target_height=160, strength=0.5),
    )
    assert hires.task.status.value == "TASK_STATUS_SUCCEED"
    assert [image.size for image in _decoded(hires)] == [(192, 160)]
    refined = novita.txt2img_v3(
        model_name="demo-sdxl",
        prompt="a lighthouse at dusk",
        image_num=1,
        width=128,
        height=128,
        steps=4,
        seed=21,
        refiner=Txt2ImgV3Refiner(switch_at=0.5),
    )
    assert refined.task.status.value == "TASK_STATUS_SUCCEED"
    assert [image.size for image in _decoded(refined)] == [(128, 128)]


def test_controlnet_img2img_with_the_novita_sdk(novita: NovitaClient) -> None:
    buffer = io.BytesIO()
    _png((200, 30, 30)).save(buffer, format="PNG")
    image_b64 = base64.b64encode(buffer.getvalue()).decode()
    result = novita.img2img_v3(
        model_name="demo-sd",
        input_image=image_b64,
        prompt="a red square, painted",
        image_num=1,
        width=128,
        height=128,
        steps=2,
        strength=0.6,
        seed=5,
        controlnet_units=[Img2ImgV3ControlNetUnit(model_name="demo-controlnet", image_base64=image_b64, strength=0.8)],
    )
    assert result.task.status.value == "TASK_STATUS_SUCCEED"
    assert [image.size for image in _decoded(result)] == [(128, 128)]


def test_feature_refusals_name_the_parameter(server: RunningServer) -> None:
    def submit(route: str, request: dict[str, Any]) -> httpx.Response:
        body = {"request": {"model_name": "demo-sd", "prompt": "x", "steps": 2, **request}}
        return httpx.post(f"{server.base_url}/v3/async/{route}", json=body, headers=_auth(server))

    no_refiner = submit("txt2img", {"refiner": {"switch_at": 0.5}})
    assert no_refiner.status_code == 400 and no_refiner.json()["metadata"]["param"] == "request.refiner"
    vae = submit("txt2img", {"sd_vae": "no-such-vae"})
    assert vae.status_code == 400 and vae.json()["metadata"]["param"] == "request.sd_vae"
    buffer = io.BytesIO()
    _png((20, 200, 30)).save(buffer, format="PNG")
    unit = {"model_name": "demo-controlnet", "image_base64": base64.b64encode(buffer.getvalue()).decode()}
    depth = submit(
        "img2img", {"image_base64": unit["image_base64"], "controlnet": {"units": [{**unit, "preprocessor": "depth"}]}}
    )
    assert depth.status_code == 400
    assert depth.json()["metadata"]["param"] == "request.controlnet.units[0].preprocessor"


def test_upscale_with_nsfw_detection(server: RunningServer) -> None:
    buffer = io.BytesIO()
    _png((40, 120, 200), size=(40, 24)).save(buffer, format="PNG")
    body = {
        "extra": {"enable_nsfw_detection": True, "nsfw_detection_level": 2},
        "request": {
            "model_name": "demo-upscaler",
            "image_base64": base64.b64encode(buffer.getvalue()).decode(),
            "scale_factor": 2,
        },
    }
    response = httpx.post(f"{server.base_url}/v3/async/upscale", json=body, headers=_auth(server))
    assert response.status_code == 200, response.text
    result = _poll(server, response.json()["task_id"])
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED", result["task"]["reason"]
    assert result["extra"]["enable_nsfw_detection"] is True
    [image] = result["images"]
    detection = image["nsfw_detection_result"]
    assert detection["valid"] is True and 0 <= detection["confidence"] <= 100
