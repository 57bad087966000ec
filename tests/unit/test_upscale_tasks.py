"""POST /v3/async/upscale through the real app, task store and runner, with a fake upscaler."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from PIL import Image

from server.app import create_app
from tests.fakes import FAKE_SAFETY_SPEC, FAKE_SPECS, FAKE_UPSCALER_SPEC, FakeSafetyEngine
from tests.unit.conftest import make_state
from tests.unit.test_image_tasks import poll


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[AsyncTestClient]:
    state = make_state(tmp_path, [*FAKE_SPECS, FAKE_UPSCALER_SPEC])
    async with AsyncTestClient(create_app(state)) as test_client:
        await state.load_task  # type: ignore[misc]
        yield test_client


def png(size: tuple[int, int], color: tuple[int, int, int] = (200, 40, 90)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def body(**request: Any) -> dict[str, Any]:
    return {"request": {"model_name": "fake-upscaler", "image_base64": png((30, 20)), "scale_factor": 2, **request}}


async def test_upscale_to_the_exact_size(client: AsyncTestClient) -> None:
    submitted = await client.post(
        "/v3/async/upscale", json={**body(scale_factor=2.5), "extra": {"response_image_type": "jpeg"}}
    )
    assert submitted.status_code == 200, submitted.text
    result = await poll(client, submitted.json()["task_id"])
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED", result["task"]["reason"]
    assert result["task"]["task_type"] == "UPSCALE"
    assert result["extra"]["seed"] == ""
    request_info = json.loads(result["extra"]["debug_info"]["request_info"])
    assert request_info["request"]["image_base64"].startswith("<")  # the image is not echoed
    [image] = result["images"]
    assert image["image_type"] == "jpeg"
    downloaded = await client.get(image["image_url"].replace("http://testserver.local", ""))
    assert downloaded.status_code == 200 and downloaded.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(downloaded.content)) as output:
        assert (output.format, output.size) == ("JPEG", (75, 50))


async def test_data_url_and_the_largest_factor(client: AsyncTestClient) -> None:
    submitted = await client.post(
        "/v3/async/upscale", json=body(image_base64="data:image/png;base64," + png((7, 5)), scale_factor=4)
    )
    assert submitted.status_code == 200, submitted.text
    result = await poll(client, submitted.json()["task_id"])
    downloaded = await client.get(result["images"][0]["image_url"].replace("http://testserver.local", ""))
    assert Image.open(io.BytesIO(downloaded.content)).size == (28, 20)


async def test_scale_factor_must_be_in_the_open_closed_range(client: AsyncTestClient) -> None:
    for scale in (1, 0.5, 0, -2, 4.01, 10):
        response = await client.post("/v3/async/upscale", json=body(scale_factor=scale))
        assert response.status_code == 400, scale
        assert response.json()["reason"] == "INVALID_REQUEST_BODY", scale
        assert response.json()["metadata"]["param"] == "request.scale_factor", scale
    wrong_type = await client.post("/v3/async/upscale", json=body(scale_factor="double"))
    assert wrong_type.status_code == 400 and wrong_type.json()["reason"] == "INVALID_REQUEST_BODY"
    missing = body()
    del missing["request"]["scale_factor"]
    response = await client.post("/v3/async/upscale", json=missing)
    assert response.status_code == 400 and "scale_factor" in response.json()["message"]


async def test_not_an_image_is_refused(client: AsyncTestClient) -> None:
    for value in (base64.b64encode(b"definitely not an image").decode(), "%%% not base64 %%%"):
        response = await client.post("/v3/async/upscale", json=body(image_base64=value))
        assert response.status_code == 400
        assert response.json()["reason"] == "INVALID_IMAGE_FORMAT"
        assert response.json()["metadata"]["param"] == "request.image_base64"


async def test_size_limits(client: AsyncTestClient) -> None:
    # 2048x2048 by 2 is exactly the output limit; a little more is refused with the factor to blame.
    large = png((2048, 2048))
    assert (await client.post("/v3/async/upscale", json=body(image_base64=large, scale_factor=2))).status_code == 200
    too_large = await client.post("/v3/async/upscale", json=body(image_base64=large, scale_factor=2.01))
    assert too_large.status_code == 400
    assert too_large.json()["reason"] == "IMAGE_EXCEEDS_MAX_RESOLUTION"
    assert too_large.json()["metadata"]["param"] == "request.scale_factor"
    too_wide = await client.post("/v3/async/upscale", json=body(image_base64=png((2049, 8))))
    assert too_wide.status_code == 400
    assert too_wide.json()["reason"] == "IMAGE_EXCEEDS_MAX_RESOLUTION"
    assert too_wide.json()["metadata"]["param"] == "request.image_base64"


async def test_model_and_extra_checks(client: AsyncTestClient) -> None:
    not_upscaler = await client.post("/v3/async/upscale", json=body(model_name="fake-sd"))
    assert not_upscaler.status_code == 400 and not_upscaler.json()["metadata"]["param"] == "request.model_name"
    unknown = await client.post("/v3/async/upscale", json=body(model_name="nope"))
    assert unknown.status_code == 404 and unknown.json()["reason"] == "MODEL_NOT_FOUND"
    # The upscaler is no text-to-image model either.
    txt2img = {"request": {"model_name": "fake-upscaler", "prompt": "x", "width": 128, "height": 128}}
    assert (await client.post("/v3/async/txt2img", json=txt2img)).status_code == 400
    # This server has no classifier: detection is refused, as for the other image tasks.
    nsfw = await client.post("/v3/async/upscale", json={**body(), "extra": {"enable_nsfw_detection": True}})
    assert nsfw.status_code == 400 and nsfw.json()["metadata"]["param"] == "extra.enable_nsfw_detection"
    hook = await client.post("/v3/async/upscale", json={**body(), "extra": {"webhook": {"url": "http://127.0.0.1:9/"}}})
    assert hook.status_code == 400 and hook.json()["metadata"]["param"] == "extra.webhook.url"


async def test_nsfw_detection_scores_the_upscaled_image(tmp_path: Path) -> None:
    specs = [*FAKE_SPECS, FAKE_UPSCALER_SPEC, FAKE_SAFETY_SPEC]
    state = make_state(tmp_path, specs, tasks={"safety_model": "fake-nsfw"})
    async with AsyncTestClient(create_app(state)) as nsfw_client:
        await state.load_task  # type: ignore[misc]
        confidences = []
        for level in (0, 2):
            extra = {"enable_nsfw_detection": True, "nsfw_detection_level": level}
            submitted = await nsfw_client.post("/v3/async/upscale", json={**body(), "extra": extra})
            assert submitted.status_code == 200, submitted.text
            result = await poll(nsfw_client, submitted.json()["task_id"])
            assert result["task"]["status"] == "TASK_STATUS_SUCCEED", result["task"]["reason"]
            assert result["extra"]["enable_nsfw_detection"] is True
            [image] = result["images"]
            assert image["nsfw_detection_result"]["valid"] is True
            confidences.append(image["nsfw_detection_result"]["confidence"])
        # The fake classifier reads the upscaled image's red (200 of 255): explicit, then all three labels.
        share = FakeSafetyEngine.probabilities(200)
        expected = [100 * share["explicit"], 100 * (share["explicit"] + share["suggestive"] + share["swimwear"])]
        assert confidences == pytest.approx(expected, abs=0.5)
        plain = await nsfw_client.post("/v3/async/upscale", json=body())
        result = await poll(nsfw_client, plain.json()["task_id"])
        assert result["extra"]["enable_nsfw_detection"] is False
        assert result["images"][0]["nsfw_detection_result"] is None
