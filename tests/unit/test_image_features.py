"""hires_fix, refiner, sd_vae and controlnet on /v3 image tasks: validation and what reaches the engine.

Through the real app, task store and runner, with the fake image engine (which records its last job).
"""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from PIL import Image

from engines.base import ModelKind, ModelSpec
from server.app import create_app
from tests.fakes import FAKE_SPECS
from tests.unit.conftest import make_state
from tests.unit.test_image_tasks import poll

OPTIONS = {"vaes": {"ok-vae": "-"}, "controlnets": {"ok-canny": "-"}, "refiner": "-"}
FEATURE_SPECS = [
    *(spec for spec in FAKE_SPECS if spec.kind is not ModelKind.IMAGE),
    ModelSpec(name="fake-xl", kind=ModelKind.IMAGE, engine="fake", path="-", options=OPTIONS),
    ModelSpec(name="fake-plain", kind=ModelKind.IMAGE, engine="fake", path="-"),
]
TXT2IMG = {"model_name": "fake-xl", "prompt": "a red barn", "width": 128, "height": 128, "steps": 4, "seed": 7}


def png(size: tuple[int, int] = (128, 128)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def unit(**fields: Any) -> dict[str, Any]:
    return {"model_name": "ok-canny", "image_base64": png(), "strength": 0.8, "preprocessor": "canny", **fields}


IMG2IMG = {**TXT2IMG, "image_base64": png(), "strength": 0.5}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[AsyncTestClient]:
    state = make_state(tmp_path, FEATURE_SPECS)
    async with AsyncTestClient(create_app(state)) as test_client:
        await state.load_task  # type: ignore[misc]
        test_client.app_state = state  # type: ignore[attr-defined]
        yield test_client


def last_job(client: AsyncTestClient, model: str = "fake-xl") -> Any:
    return client.app_state.scheduler.registry.get(model).last_job  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("route", "request_fields", "reason", "param"),
    [
        ("txt2img", {"sd_vae": "nope"}, "INVALID_REQUEST_BODY", "request.sd_vae"),
        ("txt2img", {"model_name": "fake-plain", "sd_vae": "ok-vae"}, "INVALID_REQUEST_BODY", "request.sd_vae"),
        (
            "txt2img",
            {"hires_fix": {"target_width": 250, "target_height": 256}},
            "INVALID_IMAGE_SIZE",
            "request.hires_fix.target_width",
        ),
        (
            "txt2img",
            {"hires_fix": {"target_width": 256, "target_height": 4096}},
            "INVALID_IMAGE_SIZE",
            "request.hires_fix.target_height",
        ),
        (
            "txt2img",
            {"width": 256, "hires_fix": {"target_width": 192, "target_height": 256}},
            "INVALID_IMAGE_SIZE",
            "request.hires_fix.target_width",
        ),
        (
            "txt2img",
            {"hires_fix": {"target_width": 256, "target_height": 256, "strength": 0}},
            "INVALID_REQUEST_BODY",
            "request.hires_fix.strength",
        ),
        (
            "txt2img",
            {"hires_fix": {"target_width": 256, "target_height": 256, "strength": 1.5}},
            "INVALID_REQUEST_BODY",
            "request.hires_fix.strength",
        ),
        (
            "txt2img",
            {"steps": 2, "hires_fix": {"target_width": 256, "target_height": 256, "strength": 0.2}},
            "INVALID_REQUEST_BODY",
            "request.hires_fix.strength",
        ),
        (
            "txt2img",
            {"hires_fix": {"target_width": 256, "target_height": 256, "upscaler": "Bicubic 9000"}},
            "INVALID_REQUEST_BODY",
            "request.hires_fix.upscaler",
        ),
        ("txt2img", {"model_name": "fake-plain", "refiner": {}}, "INVALID_REQUEST_BODY", "request.refiner"),
        ("txt2img", {"refiner": {"switch_at": 1}}, "INVALID_REQUEST_BODY", "request.refiner.switch_at"),
        ("txt2img", {"refiner": {"switch_at": 0}}, "INVALID_REQUEST_BODY", "request.refiner.switch_at"),
        ("img2img", {"controlnet": {"units": []}}, "INVALID_REQUEST_BODY", "request.controlnet.units"),
        ("img2img", {"controlnet": {"units": [unit()] * 5}}, "INVALID_REQUEST_BODY", "request.controlnet.units"),
        (
            "img2img",
            {"controlnet": {"units": [unit(), unit(model_name="nope")]}},
            "INVALID_REQUEST_BODY",
            "request.controlnet.units[1].model_name",
        ),
        (
            "img2img",
            {"controlnet": {"units": [unit(preprocessor="depth")]}},
            "INVALID_REQUEST_BODY",
            "request.controlnet.units[0].preprocessor",
        ),
        (
            "img2img",
            {"controlnet": {"units": [unit(strength=2.5)]}},
            "INVALID_REQUEST_BODY",
            "request.controlnet.units[0].strength",
        ),
        (
            "img2img",
            {"controlnet": {"units": [unit(guidance_start=0.8, guidance_end=0.2)]}},
            "INVALID_REQUEST_BODY",
            "request.controlnet.units[0].guidance_start",
        ),
        (
            "img2img",
            {"controlnet": {"units": [unit(image_base64=base64.b64encode(b"not an image").decode())]}},
            "INVALID_IMAGE_FORMAT",
            "request.controlnet.units[0].image_base64",
        ),
    ],
)
async def test_each_bad_value_is_a_400_naming_its_parameter(
    client: AsyncTestClient, route: str, request_fields: dict[str, Any], reason: str, param: str
) -> None:
    base = TXT2IMG if route == "txt2img" else IMG2IMG
    response = await client.post(f"/v3/async/{route}", json={"request": {**base, **request_fields}})
    assert response.status_code == 400, response.text
    assert response.json()["reason"] == reason
    assert response.json()["metadata"]["param"] == param


async def test_txt2img_features_reach_the_engine(client: AsyncTestClient) -> None:
    request = {
        **TXT2IMG,
        "sd_vae": "ok-vae",
        "refiner": {"switch_at": 0.7},
        "hires_fix": {"target_width": 256, "target_height": 192, "strength": 0.4, "upscaler": "RealESRNet_x4plus"},
    }
    submitted = await client.post("/v3/async/txt2img", json={"request": request})
    assert submitted.status_code == 200, submitted.text
    result = await poll(client, submitted.json()["task_id"])
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED", result["task"]["reason"]
    job = last_job(client)
    assert (job.width, job.height, job.vae, job.refiner_switch_at) == (128, 128, "ok-vae", 0.7)
    assert msgspec.structs.asdict(job.hires_fix) == {
        "width": 256,
        "height": 192,
        "strength": 0.4,
        "upscaler": "RealESRNet_x4plus",
    }
    image = await client.get(result["images"][0]["image_url"].replace("http://testserver.local", ""))
    assert Image.open(io.BytesIO(image.content)).size == (256, 192)


async def test_defaults_leave_the_features_off(client: AsyncTestClient) -> None:
    # novita-client sends null for what the caller left out; an empty sd_vae means the checkpoint's own.
    request = {**TXT2IMG, "sd_vae": "", "hires_fix": None, "refiner": None}
    submitted = await client.post("/v3/async/txt2img", json={"request": request})
    assert (await poll(client, submitted.json()["task_id"]))["task"]["status"] == "TASK_STATUS_SUCCEED"
    job = last_job(client)
    assert (job.vae, job.hires_fix, job.refiner_switch_at, job.controlnets) == (None, None, None, [])


async def test_controlnet_units_reach_the_engine(client: AsyncTestClient) -> None:
    units = [unit(), unit(preprocessor="none", strength=0, guidance_start=0.25, guidance_end=0.5)]
    submitted = await client.post("/v3/async/img2img", json={"request": {**IMG2IMG, "controlnet": {"units": units}}})
    assert submitted.status_code == 200, submitted.text
    result = await poll(client, submitted.json()["task_id"])
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED", result["task"]["reason"]
    job = last_job(client)
    assert [(u.name, u.preprocessor, u.strength, u.guidance_start, u.guidance_end) for u in job.controlnets] == [
        ("ok-canny", "canny", 0.8, 0.0, 1.0),
        ("ok-canny", "none", 0.0, 0.25, 0.5),
    ]
    assert Image.open(io.BytesIO(job.controlnets[0].image)).size == (128, 128)
