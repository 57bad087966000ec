"""The server's request limits on every image route, through the real app over fake engines:
one prompt limit (``limits.max_prompt_chars``), the output pixel limits (``limits.max_output_pixels``,
``limits.max_request_pixels``), edits that would run no denoising step, and a busy engine answered
as busy (503/429 with Retry-After) rather than as a failure."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from PIL import Image

from engines.base import ImageEngine, ModelKind, ModelSpec
from engines.errors import Overloaded
from schemas.limits import MAX_PROMPT_CHARS
from server.app import build_components, create_app
from server.composition import Components
from server.prompt_limit import max_prompt_chars, set_max_prompt_chars
from server.settings import Settings
from server.settings_loading import SettingsError, load_settings
from tests.fakes import FAKE_SPECS, FAKE_UPSCALER_SPEC, FakeImageEngine
from tests.unit.conftest import make_state

LIMIT = 64
NOVASSIUM = "/api/novassium/v1/generate"
NOVASSIUM_BODY = {
    "prompt": "a mansion",
    "style_preset": "photographic",
    "aspect_ratio": "1:1",
    "samples": 1,
    "output_format": "png",
    "width": 128,
    "height": 128,
}


def png_b64(size: tuple[int, int] = (128, 128)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[tuple[AsyncTestClient, Components, str]]:
    state = make_state(
        tmp_path,
        [*FAKE_SPECS, FAKE_UPSCALER_SPEC],
        vendor={"novassium_steps": 1, "novassium_max_side": 128},
        limits={
            "max_prompt_chars": LIMIT,
            "max_output_pixels": 1024 * 1024,
            "max_request_pixels": 4 * 512 * 512,
            "queue_timeout_s": 0.2,
        },
    )
    _, key = state.keystore.create("tester")
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        client.headers["Authorization"] = f"Bearer {key}"  # the OpenAI and /v3 routes; others send theirs
        yield client, state, key
    set_max_prompt_chars(MAX_PROMPT_CHARS)  # the limit is process-wide: leave the default for other tests


def _v3_image(kind: str, **request: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model_name": "fake-sd", "prompt": "a cat", "steps": 2}
    if kind != "txt2img":
        base["image_base64"] = png_b64()
    if kind == "inpainting":
        base["mask_image_base64"] = png_b64()
    return {"request": {**base, **request}}


# Each route with a prompt-like field: path, body builder (field -> body), param named in the refusal.
def _routes(key: str) -> list[tuple[str, str, Any, str]]:
    long = "x" * (LIMIT + 1)
    return [
        ("v3 txt2img prompt", "/v3/async/txt2img", _v3_image("txt2img", prompt=long), "request.prompt"),
        (
            "v3 txt2img negative",
            "/v3/async/txt2img",
            _v3_image("txt2img", negative_prompt=long),
            "request.negative_prompt",
        ),
        (
            "v3 img2img negative",
            "/v3/async/img2img",
            _v3_image("img2img", negative_prompt=long),
            "request.negative_prompt",
        ),
        (
            "v3 inpainting negative",
            "/v3/async/inpainting",
            _v3_image("inpainting", negative_prompt=long),
            "request.negative_prompt",
        ),
        (
            "openai generation negative",
            "/v1/images/generations",
            {"model": "fake-sd", "prompt": "a cat", "negative_prompt": long},
            "negative_prompt",
        ),
        ("openai generation prompt", "/v1/images/generations", {"model": "fake-sd", "prompt": long}, "prompt"),
        ("novassium prompt", NOVASSIUM, {**NOVASSIUM_BODY, "prompt": long}, "prompt"),
        ("novassium negative", NOVASSIUM, {**NOVASSIUM_BODY, "negative_prompt": long}, "negative_prompt"),
        ("sdapi text2img prompt", "/api/v3/text2img", {"key": key, "prompt": long}, "prompt"),
        (
            "sdapi text2img negative",
            "/api/v3/text2img",
            {"key": key, "prompt": "a cat", "negative_prompt": long},
            "negative_prompt",
        ),
        (
            "sdapi img2img negative",
            "/api/v3/img2img",
            # Refused before the image would be fetched: the URL leads nowhere.
            {"key": key, "prompt": "a cat", "negative_prompt": long, "init_image": "http://127.0.0.1:9/x.png"},
            "negative_prompt",
        ),
    ]


def _error_param(path: str, body: dict[str, Any]) -> Any:
    if path.startswith("/v1/"):
        return body["error"]["param"]
    if path.startswith("/api/novassium/"):
        return body["code"], body["message"]
    if path.startswith("/api/v3/"):
        return next(iter(body["message"]))
    return body["metadata"].get("param", body["message"])


async def test_every_image_route_refuses_a_prompt_over_the_limit(
    app: tuple[AsyncTestClient, Components, str],
) -> None:
    client, state, key = app
    assert max_prompt_chars() == LIMIT
    for name, path, body, param in _routes(key):
        response = await client.post(path, json=body, headers={"X-API-Key": key})
        assert response.status_code == 400, (name, response.text)
        found = _error_param(path, response.json())
        if path == NOVASSIUM:
            assert found[0] == "missing_parameters" and param in found[1], (name, found)
        else:
            assert found == param, (name, response.text)
    assert state.scheduler.engine("fake-sd", ImageEngine).last_job is None  # type: ignore[attr-defined]


async def test_openai_edit_refuses_a_long_negative_prompt(app: tuple[AsyncTestClient, Components, str]) -> None:
    client, _, _ = app
    response = await client.post(
        "/v1/images/edits",
        data={"model": "fake-sd", "prompt": "a cat", "negative_prompt": "y" * (LIMIT + 1)},
        files={"image": ("in.png", base64.b64decode(png_b64()), "image/png")},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "negative_prompt"


async def test_a_prompt_at_the_limit_is_accepted(app: tuple[AsyncTestClient, Components, str]) -> None:
    client, _, key = app
    at_limit = "z" * LIMIT
    response = await client.post(
        "/v1/images/generations",
        json={"model": "fake-sd", "prompt": at_limit, "negative_prompt": at_limit, "steps": 1, "size": "128x128"},
    )
    assert response.status_code == 200, response.text
    novassium = await client.post(
        NOVASSIUM, json={**NOVASSIUM_BODY, "prompt": at_limit, "negative_prompt": at_limit}, headers={"X-API-Key": key}
    )
    assert novassium.status_code == 200, novassium.text


async def test_the_default_limit_refuses_a_huge_negative_prompt(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        huge = "bad hands, " * (5 * 1024 * 1024 // 11)  # 5 MiB, under the body limit
        response = await client.post("/v3/async/txt2img", json=_v3_image("txt2img", negative_prompt=huge))
        assert response.status_code == 400, response.text
        assert response.json()["reason"] == "INVALID_REQUEST_BODY"
        assert response.json()["metadata"]["param"] == "request.negative_prompt"
        assert "at most 4096" in response.json()["message"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v3/async/txt2img", _v3_image("txt2img", loras=[{"model_name": "l" * 100_000}]), "request.loras"),
        ("/v3/async/txt2img", _v3_image("txt2img", embeddings=[{"model_name": "e" * 100_000}]), None),
        ("/v3/async/txt2img", _v3_image("txt2img", sampler_name="s" * 100_000), "request.sampler_name"),
        ("/v3/async/txt2img", _v3_image("txt2img", model_name="m" * 100_000), "request.model_name"),
        ("/v1/images/generations", {"model": "m" * 100_000, "prompt": "a cat"}, "model"),
    ],
)
async def test_names_are_bounded_and_not_quoted_back_whole(
    app: tuple[AsyncTestClient, Components, str], path: str, body: dict[str, Any], param: str | None
) -> None:
    client, _, _ = app
    response = await client.post(path, json=body)
    assert response.status_code == 400, response.text[:500]
    assert len(response.content) < 2000
    if param is not None:
        payload = response.json()
        assert (payload["error"]["param"] if path.startswith("/v1/") else payload["metadata"]["param"]) == param


# Output pixels: max_output_pixels 1024 x 1024 per image, max_request_pixels 4 x 512 x 512.


async def test_novassium_refuses_outputs_over_the_pixel_limits(app: tuple[AsyncTestClient, Components, str]) -> None:
    client, state, key = app
    huge = await client.post(
        NOVASSIUM, json={**NOVASSIUM_BODY, "width": 16384, "height": 16384, "samples": 7}, headers={"X-API-Key": key}
    )
    assert huge.status_code == 400 and huge.json()["code"] == "missing_parameters", huge.text
    assert "per image" in huge.json()["message"]
    many = await client.post(
        NOVASSIUM, json={**NOVASSIUM_BODY, "width": 1024, "height": 1024, "samples": 2}, headers={"X-API-Key": key}
    )
    assert many.status_code == 400 and "per request" in many.json()["message"], many.text
    assert state.scheduler.engine("fake-sd", ImageEngine).last_job is None  # type: ignore[attr-defined]
    fits = await client.post(
        NOVASSIUM, json={**NOVASSIUM_BODY, "width": 1024, "height": 1024, "samples": 1}, headers={"X-API-Key": key}
    )
    assert fits.status_code == 200, fits.text


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v3/async/txt2img", _v3_image("txt2img", width=2048, height=1024), "request.width"),
        ("/v3/async/txt2img", _v3_image("txt2img", width=512, height=512, image_num=5), "request.image_num"),
        (
            "/v3/async/txt2img",
            _v3_image(
                "txt2img",
                width=512,
                height=512,
                hires_fix={"target_width": 2048, "target_height": 1024, "strength": 0.5},
            ),
            "request.hires_fix.target_width",
        ),
        ("/v3/async/img2img", _v3_image("img2img", width=1024, height=1024, image_num=2), "request.image_num"),
        ("/v1/images/generations", {"model": "fake-sd", "prompt": "a cat", "size": "2048x2048"}, "size"),
        ("/v1/images/generations", {"model": "fake-sd", "prompt": "a cat", "size": "512x512", "n": 5}, "n"),
    ],
)
async def test_image_routes_refuse_outputs_over_the_pixel_limits(
    app: tuple[AsyncTestClient, Components, str], path: str, body: dict[str, Any], param: str
) -> None:
    client, _, _ = app
    response = await client.post(path, json=body)
    assert response.status_code == 400, response.text
    payload = response.json()
    found = payload["error"]["param"] if path.startswith("/v1/") else payload["metadata"]["param"]
    assert found == param
    code = payload["error"]["code"] if path.startswith("/v1/") else payload["reason"]
    assert code == "IMAGE_EXCEEDS_MAX_RESOLUTION"


async def test_sdapi_refuses_outputs_over_the_pixel_limits(app: tuple[AsyncTestClient, Components, str]) -> None:
    client, _, key = app
    # "upscale": "yes" doubles 1024 x 1024 to 2048 x 2048 with a hires-fix pass.
    body = {"key": key, "prompt": "a cat", "width": "1024", "height": "1024", "upscale": "yes"}
    response = await client.post("/api/v3/text2img", json=body)
    assert response.status_code == 400, response.text
    assert next(iter(response.json()["message"])) == "hires_fix.target_width"


async def test_upscale_output_is_bounded_by_the_setting(app: tuple[AsyncTestClient, Components, str]) -> None:
    client, _, _ = app
    body = {"request": {"model_name": "fake-upscaler", "image_base64": png_b64((400, 400)), "scale_factor": 3}}
    response = await client.post("/v3/async/upscale", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["reason"] == "IMAGE_EXCEEDS_MAX_RESOLUTION"
    assert response.json()["metadata"]["param"] == "request.scale_factor"
    body["request"]["scale_factor"] = 2  # 800 x 800 fits
    assert (await client.post("/v3/async/upscale", json=body)).status_code == 200


# Edits that would run no denoising step are refused before they are accepted.


@pytest.mark.parametrize("kind", ["img2img", "inpainting"])
async def test_v3_edit_without_a_denoising_step_is_refused(
    app: tuple[AsyncTestClient, Components, str], kind: str
) -> None:
    client, _, _ = app
    response = await client.post(f"/v3/async/{kind}", json=_v3_image(kind, steps=3, strength=0.3))
    assert response.status_code == 400, response.text
    assert response.json()["metadata"]["param"] == "request.strength"
    accepted = await client.post(f"/v3/async/{kind}", json=_v3_image(kind, steps=4, strength=0.25))
    assert accepted.status_code == 200, accepted.text


async def test_sdapi_img2img_without_a_denoising_step_is_refused(
    app: tuple[AsyncTestClient, Components, str],
) -> None:
    client, _, key = app
    image = f"data:image/png;base64,{png_b64()}"
    body = {"key": key, "prompt": "a cat", "init_image": image, "num_inference_steps": "2", "strength": "0.4"}
    response = await client.post("/api/v3/img2img", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["message"] == {"strength": ["steps * strength must leave at least one denoising step."]}


# A busy engine: Novassium answers busy (with Retry-After), not a server failure.


class SerialFakeImageEngine(FakeImageEngine):
    """Computes one job at a time on its device, as the diffusers engines do."""

    device_serial = True


SERIAL_SPEC = ModelSpec(name="serial-sd", kind=ModelKind.IMAGE, engine="fake-serial", path="-")


async def test_novassium_answers_busy_with_retry_after(tmp_path: Path) -> None:
    settings = msgspec.convert(
        {
            "data_dir": str(tmp_path),
            "vendor": {"novassium_model": "serial-sd", "novassium_steps": 1},
            "limits": {"queue_timeout_s": 0.2},
        },
        Settings,
    )
    state = build_components(settings, [SERIAL_SPEC], {"fake-serial": SerialFakeImageEngine})
    _, key = state.keystore.create("tester")
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        # Another job holds the device: the request waits limits.queue_timeout_s for its turn.
        async with state.scheduler.lease("serial-sd", ImageEngine):
            response = await asyncio.wait_for(
                client.post(NOVASSIUM, json=NOVASSIUM_BODY, headers={"X-API-Key": key}), timeout=10
            )
        assert response.status_code == 503, response.text
        assert int(response.headers["retry-after"]) >= 1
        assert response.json() == {
            "success": False,
            "message": "The server is busy. Please try again later.",
            "code": "server_error",
        }
        # Once the device is free the same request is served.
        again = await client.post(NOVASSIUM, json=NOVASSIUM_BODY, headers={"X-API-Key": key})
        assert again.status_code == 200, again.text


async def test_novassium_answers_a_full_queue_as_rate_limited(app: tuple[AsyncTestClient, Components, str]) -> None:
    client, state, key = app

    async def queue_full(*_: Any, **__: Any) -> Any:
        raise Overloaded("The queue of 'fake-sd' is full.", retry_after=2.0, queue_full=True)

    state.scheduler.engine("fake-sd").generate = queue_full  # type: ignore[attr-defined]
    response = await client.post(NOVASSIUM, json=NOVASSIUM_BODY, headers={"X-API-Key": key})
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == "2"
    assert response.json() == {
        "success": False,
        "message": "Rate limit exceeded. Please try again later.",
        "code": "rate_limit_exceeded",
    }


def test_the_limits_are_settings() -> None:
    settings = load_settings(
        environ={
            "OMNISERVE_LIMITS__MAX_PROMPT_CHARS": "1000",
            "OMNISERVE_LIMITS__MAX_OUTPUT_PIXELS": "1048576",
            "OMNISERVE_LIMITS__MAX_REQUEST_PIXELS": "4194304",
        }
    )
    assert settings.limits.max_prompt_chars == 1000
    assert (settings.limits.max_output_pixels, settings.limits.max_request_pixels) == (1048576, 4194304)
    defaults = load_settings(environ={}).limits
    assert (defaults.max_prompt_chars, defaults.max_output_pixels, defaults.max_request_pixels) == (
        4096,
        4096 * 4096,
        1024 * 1024 * 128,
    )
    with pytest.raises(SettingsError, match="max_prompt_chars"):
        load_settings(environ={"OMNISERVE_LIMITS__MAX_PROMPT_CHARS": "0"})
