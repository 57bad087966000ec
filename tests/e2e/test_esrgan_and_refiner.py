"""ESRGAN upscaling (/v3/async/upscale and txt2img's hires fix), img2img's refiner and the
restore_faces refusal, against the shared server on the demo catalog.

novita-client has no method for /v3/async/upscale: the body goes through its own request and
polling calls (_post, wait_for_task_v3, download_images), as its other v3 methods do.
"""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import httpx
import numpy as np
import pytest
from novita_client import NovitaClient
from novita_client.proto import Txt2ImgV3HiresFix, V3TaskResponse
from PIL import Image

from tests.e2e.conftest import RunningServer


@pytest.fixture(scope="module")
def novita(server: RunningServer) -> NovitaClient:
    return NovitaClient(server.api_key, base_url=server.base_url)


def _auth(server: RunningServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_key}"}


def _input_png(size: tuple[int, int]) -> str:
    pixels = np.random.default_rng(5).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _upscale(novita: NovitaClient, model: str, scale: float, image: str) -> V3TaskResponse:
    body = {"extra": {"response_image_type": "png"}, "request": {"model_name": model, "scale_factor": scale}}
    body["request"]["image_base64"] = image
    task_id = novita._post("/v3/async/upscale", body)["task_id"]
    result = novita.wait_for_task_v3(task_id, wait_for=120)
    assert result.task.status.value == "TASK_STATUS_SUCCEED", result.task.reason
    assert result.task.task_type == "UPSCALE"
    result.download_images()
    return result


def _images(result: Any) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in result.images_encoded]


def test_upscale_with_the_esrgan_demo_through_the_novita_client(novita: NovitaClient) -> None:
    source = _input_png((40, 24))
    first = _upscale(novita, "demo-esrgan", 2, source)
    [image] = _images(first)
    assert (image.format, image.size) == ("PNG", (80, 48))
    assert _upscale(novita, "demo-esrgan", 2, source).images_encoded == first.images_encoded  # deterministic
    # Novita's documented request names RealESRGAN_x4plus_anime_6B: the demo answers to it.
    assert _upscale(novita, "RealESRGAN_x4plus_anime_6B", 2, source).images_encoded == first.images_encoded
    [native] = _images(_upscale(novita, "demo-esrgan", 4, source))
    assert native.size == (160, 96)
    # The SD x4 upscaler is still picked by its own name: another model, another picture.
    [diffusion] = _images(_upscale(novita, "demo-upscaler", 2, source))
    assert diffusion.size == (80, 48)
    assert not np.array_equal(np.asarray(diffusion.convert("RGB")), np.asarray(image.convert("RGB")))
    listed = {model.sd_name_in_api: model for model in novita.models_v3(refresh=True)}
    assert listed["demo-esrgan"].type.name == "upscaler"


def test_hires_fix_with_an_esrgan_upscaler_name(novita: NovitaClient) -> None:
    def draw(upscaler: str) -> Image.Image:
        result = novita.txt2img_v3(
            model_name="demo-sd",
            prompt="a lighthouse at dusk",
            image_num=1,
            width=128,
            height=128,
            steps=2,
            seed=33,
            response_image_type="png",
            hires_fix=Txt2ImgV3HiresFix(target_width=192, target_height=160, strength=0.5, upscaler=upscaler),
        )
        assert result.task.status.value == "TASK_STATUS_SUCCEED"
        [image] = _images(result)
        return image

    # demo-sd maps RealESRGAN_x4plus_anime_6B to demo-esrgan; RealESRNet_x4plus has no network there (Lanczos).
    through_esrgan, lanczos = draw("RealESRGAN_x4plus_anime_6B"), draw("RealESRNet_x4plus")
    assert through_esrgan.size == lanczos.size == (192, 160)
    assert not np.array_equal(np.asarray(through_esrgan), np.asarray(lanczos))


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


def test_img2img_with_the_refiner(server: RunningServer) -> None:
    def draw(**change: Any) -> bytes:
        request = {
            "model_name": "demo-sdxl",
            "prompt": "a lighthouse at dusk",
            "image_base64": _input_png((128, 128)),
            "steps": 8,
            "strength": 0.6,
            "seed": 9,
            **change,
        }
        body = {"extra": {"response_image_type": "png"}, "request": request}
        response = httpx.post(f"{server.base_url}/v3/async/img2img", json=body, headers=_auth(server))
        assert response.status_code == 200, response.text
        result = _poll(server, response.json()["task_id"])
        assert result["task"]["status"] == "TASK_STATUS_SUCCEED", result["task"]["reason"]
        return httpx.get(result["images"][0]["image_url"]).content

    refined = draw(refiner={"switch_at": 0.5})
    assert refined != draw()
    with Image.open(io.BytesIO(refined)) as image:
        assert image.size == (128, 128)


def test_restore_faces_true_is_refused(server: RunningServer) -> None:
    request = {"model_name": "demo-sd", "prompt": "a portrait", "width": 128, "height": 128, "steps": 1}
    for value, status in ((True, 400), (False, 200)):
        body = {"request": {**request, "restore_faces": value}}
        response = httpx.post(f"{server.base_url}/v3/async/txt2img", json=body, headers=_auth(server))
        assert response.status_code == status, response.text
    body = {"request": {**request, "restore_faces": True}}
    refused = httpx.post(f"{server.base_url}/v3/async/txt2img", json=body, headers=_auth(server)).json()
    assert refused["reason"] == "INVALID_REQUEST_BODY"
    assert refused["metadata"]["param"] == "request.restore_faces"
    assert "face restoration" in refused["message"]
