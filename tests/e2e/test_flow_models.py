"""The flow-matching families (demo-flux: FLUX.1 schnell, demo-sd3: SD 3.5, demo-qwen-image) against
a running omniserve: /v3 tasks through novita-client, OpenAI images through the openai SDK, and
Novita's fixed routes /v3beta/flux-1-schnell and /v3/async/qwen-image-txt2img."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import httpx
import openai
import pytest
from novita_client import NovitaClient
from PIL import Image

from tests.e2e.conftest import RunningServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def novita(server: RunningServer) -> NovitaClient:
    return NovitaClient(server.api_key, base_url=server.base_url)


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_url, api_key=server.api_key, max_retries=0, timeout=120)


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


def _image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_txt2img_with_novita_client_on_sd3_and_qwen_image(novita: NovitaClient) -> None:
    for model in ("demo-sd3", "demo-qwen-image"):

        def generate(model: str = model) -> Any:
            # novita-client always sends a sampler (its default "Euler a"): name the family's own.
            return novita.txt2img_v3(
                model_name=model,
                prompt="a lighthouse at dusk",
                negative_prompt="blurry",
                image_num=2,
                width=144,
                height=128,
                steps=2,
                seed=77,
                sampler_name="FlowMatchEuler",
                response_image_type="png",
            )

        first = generate()
        assert first.task.status.value == "TASK_STATUS_SUCCEED", model
        images = [_image(base64.b64decode(data)) for data in first.images_encoded]
        assert [(image.format, image.size) for image in images] == [("PNG", (144, 128))] * 2
        assert generate().images_encoded == first.images_encoded  # same seed, same pixels


def test_v3_txt2img_on_flux_uses_the_family_defaults_and_refuses_what_it_cannot_use(server: RunningServer) -> None:
    url = f"{server.base_url}/v3/async/txt2img"
    body = {"request": {"model_name": "demo-flux", "prompt": "a red barn", "width": 128, "height": 144, "seed": 5}}
    submitted = httpx.post(url, json=body, headers=_auth(server))
    assert submitted.status_code == 200, submitted.text
    result = _poll(server, submitted.json()["task_id"])
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED"
    image = _image(httpx.get(result["images"][0]["image_url"]).content)
    assert image.size == (128, 144)
    for field, value, param in (
        ("sampler_name", "Euler a", "request.sampler_name"),
        ("guidance_scale", 3.5, "request.guidance_scale"),  # schnell takes no guidance
        ("negative_prompt", "blurry", "request.negative_prompt"),
        ("prompt", "a (red barn:1.3)", "request.prompt"),
        ("clip_skip", 2, "request.clip_skip"),
        ("width", 136, "request.width"),
        ("hires_fix", {"target_width": 256, "target_height": 256}, "request.hires_fix"),
        ("loras", [{"model_name": "demo-lora"}], "request.loras"),
    ):
        refused = httpx.post(url, json={"request": {**body["request"], field: value}}, headers=_auth(server))
        assert refused.status_code == 400, (field, refused.text)
        assert refused.json()["metadata"]["param"] == param, field


def test_openai_generations_and_edits_on_flow_models(client: openai.OpenAI) -> None:
    def generate() -> list[str]:
        result = client.images.generate(
            model="demo-flux",
            prompt="a red barn",
            n=2,
            size="128x160",
            response_format="b64_json",
            extra_body={"seed": 3},
        )
        return [item.b64_json or "" for item in result.data]

    first = generate()
    assert [_image(base64.b64decode(data)).size for data in first] == [(128, 160)] * 2
    assert generate() == first
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(model="demo-flux", prompt="x", size="136x136")
    assert refused.value.param == "size" and "multiple of 16" in refused.value.message

    source = io.BytesIO()
    Image.new("RGB", (200, 150), (200, 40, 40)).save(source, format="PNG")
    edited = client.images.edit(
        model="demo-qwen-image",
        image=("in.png", source.getvalue(), "image/png"),
        prompt="a blue barn",
        response_format="b64_json",
        extra_body={"steps": 4, "strength": 0.6, "seed": 1},
    )
    # The input's size, each side down to a multiple of 16.
    assert _image(base64.b64decode(edited.data[0].b64_json or "")).size == (192, 144)


def test_flux_schnell_route_answers_signed_urls(server: RunningServer) -> None:
    body = {"prompt": "a tiger eye", "seed": 9, "steps": 2, "width": 64, "height": 80, "image_num": 2}
    url = f"{server.base_url}/v3beta/flux-1-schnell"
    answer = httpx.post(url, json={**body, "response_image_type": "jpeg"}, headers=_auth(server), timeout=120)
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert found["task"]["task_id"] and len(found["images"]) == 2
    assert {image["image_type"] for image in found["images"]} == {"jpeg"}
    assert {image["image_url_ttl"] for image in found["images"]} == {"3600"}
    images = [_image(httpx.get(image["image_url"]).content) for image in found["images"]]
    assert [(image.format, image.size) for image in images] == [("JPEG", (64, 80))] * 2
    again = httpx.post(url, json={**body, "response_image_type": "png"}, headers=_auth(server), timeout=120).json()
    first_png = _image(httpx.get(again["images"][0]["image_url"]).content)
    repeat = httpx.post(url, json={**body, "response_image_type": "png"}, headers=_auth(server), timeout=120).json()
    assert httpx.get(repeat["images"][0]["image_url"]).content == httpx.get(again["images"][0]["image_url"]).content
    assert first_png.size == (64, 80)
    missing = httpx.post(url, json={"prompt": "x"}, headers=_auth(server))
    assert missing.status_code == 400
    odd = httpx.post(url, json={**body, "width": 72}, headers=_auth(server))
    assert odd.status_code == 400 and odd.json()["metadata"]["param"] == "width"


def test_qwen_image_route_queues_a_task(server: RunningServer) -> None:
    url = f"{server.base_url}/v3/async/qwen-image-txt2img"
    submitted = httpx.post(url, json={"prompt": "a poster that says OPEN", "size": "256*272"}, headers=_auth(server))
    assert submitted.status_code == 200, submitted.text
    result = _poll(server, submitted.json()["task_id"], timeout_s=240)
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED", result
    assert _image(httpx.get(result["images"][0]["image_url"]).content).size == (256, 272)
    for size in ("1024x1024", "128*128", "2048*1024"):
        refused = httpx.post(url, json={"prompt": "x", "size": size}, headers=_auth(server))
        assert refused.status_code == 400 and refused.json()["metadata"]["param"] == "size", size


def test_model_listing_names_the_families(server: RunningServer) -> None:
    listed = httpx.get(
        f"{server.base_url}/v3/model", params={"filter.types": "checkpoint"}, headers=_auth(server)
    ).json()
    bases = {model["sd_name"]: model["base_model"] for model in listed["models"]}
    assert bases["demo-flux"] == "Flux.1 S"
    assert bases["demo-sd3"] == "SD 3.5"
    assert bases["demo-qwen-image"] == "Qwen-Image"
    assert bases["demo-sd"] == "SD 1.5"
