"""POST /v3/img2prompt and /v3/reimagine through the real app, with a fake captioner and variation engine."""

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

from engines.base import ModelSpec
from engines.registry import CatalogError
from server.app import build_components, create_app
from server.composition import Components
from server.settings import Settings
from tests.fakes import FAKE_SPECS, fake_factory
from tests.fakes_image_tools import (
    FAKE_CAPTION_SPEC,
    FAKE_VARIATION_SPEC,
    FakeCaptionEngine,
    FakeVariationEngine,
    fake_tools_factory,
)

TOOL_SPECS = [*FAKE_SPECS, FAKE_CAPTION_SPEC, FAKE_VARIATION_SPEC]


def tools_state(tmp_path: Path, specs: list[ModelSpec] = TOOL_SPECS, **image_tools: object) -> Components:
    config = msgspec.convert({"data_dir": str(tmp_path), "image_tools": image_tools}, Settings)
    return build_components(config, specs, {"fake": fake_factory, "fake-tools": fake_tools_factory})


async def started(state: Components) -> AsyncIterator[AsyncTestClient]:
    async with AsyncTestClient(create_app(state)) as test_client:
        await state.load_task  # type: ignore[misc]
        yield test_client


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[AsyncTestClient]:
    async for test_client in started(tools_state(tmp_path, img2prompt_max_side=64, reimagine_max_side=48)):
        yield test_client


def encoded(size: tuple[int, int], color: tuple[int, int, int] = (200, 40, 90), fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


async def test_img2prompt_answers_the_captioners_words(client: AsyncTestClient) -> None:
    response = await client.post("/v3/img2prompt", json={"image_file": encoded((40, 30), (10, 20, 30))})
    assert response.status_code == 200, response.text
    assert response.json() == {"prompt": "a 40x30 picture of rgb 10 20 30"}


async def test_img2prompt_takes_a_data_url_and_jpeg(client: AsyncTestClient) -> None:
    image = "data:image/jpeg;base64," + encoded((64, 8), (0, 0, 0), "JPEG")
    response = await client.post("/v3/img2prompt", json={"image_file": image})
    assert response.status_code == 200, response.text
    assert response.json()["prompt"].startswith("a 64x8 picture")


@pytest.mark.parametrize("image_type", ["png", "jpeg", "webp"])
async def test_reimagine_answers_a_variation_in_the_requested_format(client: AsyncTestClient, image_type: str) -> None:
    body = {"image_file": encoded((45, 31), (200, 40, 90)), "extra": {"response_image_type": image_type}}
    response = await client.post("/v3/reimagine", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["image_type"] == image_type
    with Image.open(io.BytesIO(base64.b64decode(answer["image_file"]))) as image:
        assert image.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[image_type]
        assert image.size == (45, 31)
        if image_type == "png":  # lossless: every channel is the fake's inversion, shifted by one seed
            red, green, blue = image.convert("RGB").getpixel((0, 0))
            shifts = {(red - (255 - 200)) % 256, (green - (255 - 40)) % 256, (blue - (255 - 90)) % 256}
            assert len(shifts) == 1


async def test_reimagine_defaults_to_png_and_draws_a_seed_per_call(tmp_path: Path) -> None:
    state = tools_state(tmp_path)
    async for client in started(state):
        seeds = set()
        for _ in range(4):
            response = await client.post("/v3/reimagine", json={"image_file": encoded((16, 16))})
            assert response.status_code == 200, response.text
            assert response.json()["image_type"] == "png"
            fake = state.scheduler.registry.get("fake-reimagine")
            assert isinstance(fake, FakeVariationEngine) and fake.last_job is not None
            seeds.add(fake.last_job.seed)
        assert len(seeds) > 1  # four draws from 2**32 seeds


async def test_enterprise_plan_and_explicit_nulls_are_accepted(client: AsyncTestClient) -> None:
    # What novita-client sends: enterprise_plan in extra, every optional field present.
    extra = {"response_image_type": None, "enterprise_plan": {"enabled": False}}
    body = {"image_file": encoded((8, 8)), "extra": extra}
    response = await client.post("/v3/reimagine", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["image_type"] == "png"


def assert_refused(response: Any, status: int, reason: str, param: str | None = "image_file") -> None:
    assert response.status_code == status, response.text
    error = response.json()
    assert error["code"] == status and error["reason"] == reason, error
    assert error["message"]
    if param is not None:
        assert error["metadata"]["param"] == param, error


@pytest.mark.parametrize("route", ["/v3/img2prompt", "/v3/reimagine"])
async def test_bad_images_are_refused_in_the_v3_envelope(client: AsyncTestClient, route: str) -> None:
    not_base64 = await client.post(route, json={"image_file": "not base64 at all!"})
    assert_refused(not_base64, 400, "INVALID_IMAGE_FORMAT")
    not_an_image = await client.post(route, json={"image_file": base64.b64encode(b"GIF89a not really").decode()})
    assert_refused(not_an_image, 400, "INVALID_IMAGE_FORMAT")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="BMP")  # a real image, in a format no route takes
    bmp = await client.post(route, json={"image_file": base64.b64encode(buffer.getvalue()).decode()})
    assert_refused(bmp, 400, "INVALID_IMAGE_FORMAT")
    truncated = base64.b64decode(encoded((32, 32)))[:-40]
    damaged = await client.post(route, json={"image_file": base64.b64encode(truncated).decode()})
    assert_refused(damaged, 400, "INVALID_IMAGE_FORMAT")
    missing = await client.post(route, json={"extra": {}})
    assert_refused(missing, 400, "INVALID_REQUEST_BODY", param=None)
    assert "image_file" in missing.json()["message"]
    wrong_type = await client.post(route, json={"image_file": 12})
    assert_refused(wrong_type, 400, "INVALID_REQUEST_BODY", param=None)
    empty = await client.post(route, content=b"", headers={"content-type": "application/json"})
    assert empty.status_code == 400


async def test_each_route_has_its_own_side_limit(client: AsyncTestClient) -> None:
    # The fixture's limits: 64 a side for img2prompt, 48 for reimagine.
    assert (await client.post("/v3/img2prompt", json={"image_file": encoded((64, 64))})).status_code == 200
    too_wide = await client.post("/v3/img2prompt", json={"image_file": encoded((65, 10))})
    assert_refused(too_wide, 400, "IMAGE_EXCEEDS_MAX_RESOLUTION")
    assert "65x10" in too_wide.json()["message"] and "64x64" in too_wide.json()["message"]
    assert (await client.post("/v3/reimagine", json={"image_file": encoded((48, 48))})).status_code == 200
    too_tall = await client.post("/v3/reimagine", json={"image_file": encoded((48, 49))})
    assert_refused(too_tall, 400, "IMAGE_EXCEEDS_MAX_RESOLUTION")


async def test_refused_images_never_reach_the_engines(tmp_path: Path) -> None:
    state = tools_state(tmp_path, reimagine_max_side=8)
    async for client in started(state):
        await client.post("/v3/img2prompt", json={"image_file": "%%%"})
        await client.post("/v3/reimagine", json={"image_file": encoded((9, 9))})
        captioner = state.scheduler.registry.get("fake-captioner")
        variation = state.scheduler.registry.get("fake-reimagine")
        assert isinstance(captioner, FakeCaptionEngine) and isinstance(variation, FakeVariationEngine)
        assert (captioner.calls, variation.calls) == (0, 0)


async def test_bad_response_image_type_is_refused(client: AsyncTestClient) -> None:
    body = {"image_file": encoded((8, 8)), "extra": {"response_image_type": "gif"}}
    response = await client.post("/v3/reimagine", json=body)
    assert_refused(response, 400, "INVALID_REQUEST_BODY", param=None)
    assert "response_image_type" in response.json()["message"]


async def test_tools_need_a_key(tmp_path: Path) -> None:
    state = tools_state(tmp_path)
    state.keystore.create("someone")
    async for client in started(state):
        for route in ("/v3/img2prompt", "/v3/reimagine"):
            response = await client.post(route, json={"image_file": encoded((8, 8))})
            assert response.status_code == 401, route


async def test_routes_answer_404_without_a_model(tmp_path: Path) -> None:
    # A catalog with neither kind: each route answers that no model is configured.
    async for client in started(tools_state(tmp_path, FAKE_SPECS)):
        for route, what in (("/v3/img2prompt", "caption"), ("/v3/reimagine", "reimagine")):
            response = await client.post(route, json={"image_file": encoded((8, 8))})
            assert_refused(response, 404, "MODEL_NOT_FOUND", param=None)
            assert f"No {what} model" in response.json()["message"]


async def test_an_empty_setting_turns_a_route_off(tmp_path: Path) -> None:
    async for client in started(tools_state(tmp_path, caption_model="", reimagine_model="")):
        for route in ("/v3/img2prompt", "/v3/reimagine"):
            response = await client.post(route, json={"image_file": encoded((8, 8))})
            assert_refused(response, 404, "MODEL_NOT_FOUND", param=None)


def test_the_settings_choose_among_the_catalogs_models(tmp_path: Path) -> None:
    second_captioner = msgspec.structs.replace(FAKE_CAPTION_SPEC, name="other-captioner")
    second_variation = msgspec.structs.replace(FAKE_VARIATION_SPEC, name="other-reimagine")
    specs = [*TOOL_SPECS, second_captioner, second_variation]
    # Unset: the first of each kind (the demo models are not in this catalog).
    state = tools_state(tmp_path, specs)
    assert (state.image_prompts.model, state.reimaginer.model) == ("fake-captioner", "fake-reimagine")
    chosen = tools_state(tmp_path, specs, caption_model="other-captioner", reimagine_model="other-reimagine")
    assert (chosen.image_prompts.model, chosen.reimaginer.model) == ("other-captioner", "other-reimagine")


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("caption_model", "no-such-model"),
        ("caption_model", "fake-reimagine"),  # a model of another kind
        ("caption_model", "fake-chat"),
        ("reimagine_model", "fake-captioner"),
        ("reimagine_model", "fake-sd"),
    ],
)
def test_a_setting_naming_no_such_model_stops_the_start(tmp_path: Path, setting: str, value: str) -> None:
    with pytest.raises(CatalogError, match=f"image_tools.{setting} '{value}' is not a"):
        tools_state(tmp_path, **{setting: value})


def test_side_limits_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(msgspec.ValidationError, match="img2prompt_max_side"):
        msgspec.convert({"image_tools": {"reimagine_max_side": 0}}, Settings)
