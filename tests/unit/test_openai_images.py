"""OpenAI /images/generations and /images/edits through the real app, with the fake image engine."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from PIL import Image

from engines.base import ImageGeneration, ImageResult, ProgressCallback
from server.capabilities.images.inputs import MAX_INPUT_IMAGE_BYTES

GENERATE = {"model": "fake-sd", "prompt": "a red barn", "size": "128x128", "steps": 2, "seed": 7}
EDIT = {"model": "fake-sd", "prompt": "a blue barn", "steps": "4"}


def encoded(image: Image.Image, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def png(width: int = 160, height: int = 136, mode: str = "RGB", color: Any = (200, 30, 30)) -> bytes:
    return encoded(Image.new(mode, (width, height), color))


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def error_of(response: Any) -> tuple[int, str, str | None]:
    error = response.json()["error"]
    return response.status_code, error["code"], error["param"]


class JobSpy:
    """Wraps the fake engine's generate and keeps every job it was given."""

    def __init__(self, client: AsyncTestClient, monkeypatch: pytest.MonkeyPatch) -> None:
        engine = client.app_state.scheduler.engine("fake-sd")  # type: ignore[attr-defined]
        original = engine.generate
        self.jobs: list[ImageGeneration] = []

        async def generate(job: ImageGeneration, progress: ProgressCallback | None = None) -> ImageResult:
            self.jobs.append(job)
            result: ImageResult = await original(job, progress)
            return result

        monkeypatch.setattr(engine, "generate", generate)


@pytest.mark.parametrize("prefix", ["/v1", "/openai/v1"])
async def test_generation_urls_resolve_to_images(client: AsyncTestClient, prefix: str) -> None:
    response = await client.post(f"{prefix}/images/generations", json={**GENERATE, "n": 2, "size": "136x128"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"created", "data", "output_format"}
    assert body["output_format"] == "png"
    assert len(body["data"]) == 2
    for item in body["data"]:
        assert set(item) == {"url"}  # no b64_json, no revised_prompt
        assert item["url"].startswith("http://testserver.local/v3/files/")
        downloaded = await client.get(item["url"].removeprefix("http://testserver.local"))
        assert downloaded.status_code == 200
        assert downloaded.headers["content-type"] == "image/png"
        image = decode(downloaded.content)
        assert image.format == "PNG" and image.size == (136, 128)
    assert body["data"][0]["url"] != body["data"][1]["url"]


@pytest.mark.parametrize(("output_format", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
async def test_generation_b64_json(client: AsyncTestClient, output_format: str, pil_format: str) -> None:
    request = {**GENERATE, "n": 3, "size": "128x144", "response_format": "b64_json", "output_format": output_format}
    response = await client.post("/v1/images/generations", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["output_format"] == output_format
    assert len(body["data"]) == 3
    images = [decode(base64.b64decode(item["b64_json"])) for item in body["data"]]
    assert all(set(item) == {"b64_json"} for item in body["data"])
    assert all(image.format == pil_format and image.size == (128, 144) for image in images)
    if output_format == "png":  # lossless: the fake paints image i with red = seed + i
        assert [image.getpixel((0, 0))[0] for image in images] == [7, 8, 9]  # type: ignore[index]


async def test_generation_defaults_and_ignored_openai_fields(
    client: AsyncTestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = JobSpy(client, monkeypatch)
    request = {
        "model": "fake-sd",
        "prompt": "a red barn",
        "quality": "hd",
        "style": "vivid",
        "user": "u-1",
        "background": "auto",
        "negative_prompt": "blurry",
        "guidance_scale": 3.5,
        "sampler_name": "DPM++ 2M Karras",
        "steps": 3,
        "response_format": "b64_json",
    }
    response = await client.post("/v1/images/generations", json=request)
    assert response.status_code == 200, response.text
    [job] = spy.jobs
    assert (job.width, job.height) == (512, 512)  # size "auto"
    assert job.image_num == 1 and job.steps == 3 and job.guidance_scale == 3.5
    assert job.negative_prompt == "blurry" and job.sampler == "DPM++ 2M Karras"
    assert job.init_image is None and job.mask_image is None
    assert 0 <= job.seed < 2**32  # drawn by the server


async def test_edit_without_mask_is_img2img(client: AsyncTestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = JobSpy(client, monkeypatch)
    source = png(203, 150)
    response = await client.post(
        "/v1/images/edits",
        data={**EDIT, "strength": "0.5", "response_format": "b64_json", "n": "2"},
        files={"image": ("in.png", source, "image/png")},
    )
    assert response.status_code == 200, response.text
    [job] = spy.jobs
    assert job.init_image == source and job.mask_image is None
    assert job.strength == 0.5 and job.steps == 4 and job.image_num == 2
    assert (job.width, job.height) == (200, 144)  # "auto": the input's size, down to multiples of 8
    images = [decode(base64.b64decode(item["b64_json"])) for item in response.json()["data"]]
    assert [image.size for image in images] == [(200, 144), (200, 144)]


async def test_edit_with_openai_mask_is_inpainting(client: AsyncTestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = JobSpy(client, monkeypatch)
    # OpenAI's convention: fully transparent pixels are the ones to edit.
    mask = Image.new("RGBA", (160, 136), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 80, 136))
    response = await client.post(
        "/openai/v1/images/edits",
        data={**EDIT, "size": "128x128", "output_format": "webp"},
        files=[("image[]", ("in.png", png(), "image/png")), ("mask", ("mask.png", encoded(mask), "image/png"))],
    )
    assert response.status_code == 200, response.text
    [job] = spy.jobs
    assert job.strength == 0.75  # the default
    assert (job.width, job.height) == (128, 128)
    assert job.mask_image is not None
    engine_mask = decode(job.mask_image)  # the engines' convention: white repaints
    assert engine_mask.mode == "L" and engine_mask.size == (160, 136)
    assert engine_mask.getpixel((10, 10)) == 255 and engine_mask.getpixel((150, 10)) == 0
    url = response.json()["data"][0]["url"]
    downloaded = await client.get(url.removeprefix("http://testserver.local"))
    assert downloaded.headers["content-type"] == "image/webp"
    assert decode(downloaded.content).size == (128, 128)


async def test_grayscale_mask_keeps_white_repaints(client: AsyncTestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = JobSpy(client, monkeypatch)
    mask = Image.new("L", (160, 136), 0)
    mask.paste(255, (0, 0, 80, 136))
    response = await client.post(
        "/v1/images/edits",
        data={**EDIT, "response_format": "b64_json"},
        files={"image": ("in.jpg", encoded(Image.new("RGB", (160, 136)), "JPEG")), "mask": ("m.png", encoded(mask))},
    )
    assert response.status_code == 200, response.text
    engine_mask = decode(spy.jobs[0].mask_image or b"")
    assert engine_mask.getpixel((10, 10)) == 255 and engine_mask.getpixel((150, 10)) == 0


async def test_edit_body_may_exceed_the_app_limit(client: AsyncTestClient) -> None:
    # Image and mask of 6 MB each (valid PNGs; PIL ignores bytes after IEND): more than
    # the app's 10 MB default, within the edit route's own limit.
    padding = b"\0" * (6 * 1024 * 1024)
    files = {"image": ("in.png", png() + padding), "mask": ("m.png", png(mode="L", color=255) + padding)}
    response = await client.post("/v1/images/edits", data={**EDIT, "response_format": "b64_json"}, files=files)
    assert response.status_code == 200, response.text
    too_large = {"image": ("in.png", png() + padding * 2), "mask": ("m.png", png() + padding * 2)}
    response = await client.post("/v1/images/edits", data=EDIT, files=too_large)
    assert response.status_code == 413


def _bomb() -> bytes:
    # 4097 x 4097 one-bit pixels: a small file, too many pixels.
    return encoded(Image.new("1", (4097, 4097)))


@pytest.mark.parametrize(
    ("files", "data", "code", "param"),
    [
        ({"image": ("in.png", b"not an image")}, {}, "INVALID_IMAGE_FORMAT", "image"),
        ({"image": ("in.png", png()[:200])}, {}, "INVALID_IMAGE_FORMAT", "image"),  # truncated
        ({"image": ("in.gif", encoded(Image.new("RGB", (160, 136)), "GIF"))}, {}, "INVALID_IMAGE_FORMAT", "image"),
        ({"image": ("in.png", png()), "mask": ("m.png", b"GIF89a...")}, {}, "INVALID_IMAGE_FORMAT", "mask"),
        (
            {"image": ("in.png", png() + b"\0" * MAX_INPUT_IMAGE_BYTES)},
            {},
            "IMAGE_FILE_EXCEEDS_MAX_SIZE",
            "image",
        ),
        ({"image": ("in.png", _bomb())}, {}, "IMAGE_EXCEEDS_MAX_RESOLUTION", "image"),
        ({"image": ("in.png", png()), "mask": ("m.png", _bomb())}, {}, "IMAGE_EXCEEDS_MAX_RESOLUTION", "mask"),
        ({"image": ("in.png", png()), "mask": ("m.png", png(128, 128))}, {}, "INVALID_IMAGE_SIZE", "mask"),
        ({}, {}, "INVALID_REQUEST_BODY", "image"),
        ({"image": ("in.png", png()), "image[]": ("b.png", png())}, {}, "INVALID_REQUEST_BODY", "image"),
        ({"image": ("in.png", png())}, {"size": "100x100"}, "INVALID_IMAGE_SIZE", "size"),
        ({"image": ("in.png", png())}, {"strength": "0"}, "INVALID_REQUEST_BODY", "strength"),
        ({"image": ("in.png", png())}, {"strength": "0.1"}, "INVALID_REQUEST_BODY", "strength"),  # 4 * 0.1 < 1
        ({"image": ("in.png", png())}, {"n": "two"}, "INVALID_REQUEST_BODY", "n"),
        ({"image": ("in.png", png())}, {"model": "fake-chat"}, "INVALID_REQUEST_BODY", "model"),
    ],
)
async def test_edit_rejects_bad_input(
    client: AsyncTestClient, files: dict[str, Any], data: dict[str, str], code: str, param: str
) -> None:
    response = await client.post("/v1/images/edits", data={**EDIT, **data}, files=files or {"other": ("x", b"x")})
    assert error_of(response) == (400, code, param), response.text


async def test_edit_requires_prompt_and_model(client: AsyncTestClient) -> None:
    for missing in ("prompt", "model"):
        data = {name: value for name, value in EDIT.items() if name != missing}
        response = await client.post("/v1/images/edits", data=data, files={"image": ("in.png", png())})
        assert error_of(response) == (400, "INVALID_REQUEST_BODY", missing)


async def test_edit_needs_multipart(client: AsyncTestClient) -> None:
    response = await client.post("/v1/images/edits", json=EDIT)
    assert error_of(response) == (400, "INVALID_REQUEST_BODY", None)
    assert "multipart/form-data" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("change", "status", "code", "param"),
    [
        ({"size": "100x100"}, 400, "INVALID_IMAGE_SIZE", "size"),
        ({"size": "132x128"}, 400, "INVALID_IMAGE_SIZE", "size"),
        ({"size": "4096x4096"}, 400, "INVALID_IMAGE_SIZE", "size"),
        ({"size": "large"}, 400, "INVALID_IMAGE_SIZE", "size"),
        ({"n": 0}, 400, "INVALID_REQUEST_BODY", "n"),
        ({"n": 9}, 400, "INVALID_REQUEST_BODY", "n"),
        ({"steps": 0}, 400, "INVALID_REQUEST_BODY", "steps"),
        ({"prompt": " "}, 400, "INVALID_REQUEST_BODY", "prompt"),
        ({"seed": -2}, 400, "INVALID_REQUEST_BODY", "seed"),
        ({"sampler_name": "nope"}, 400, "INVALID_REQUEST_BODY", "sampler_name"),
        ({"stream": True}, 400, "INVALID_REQUEST_BODY", "stream"),
        ({"response_format": "xml"}, 400, "INVALID_REQUEST_BODY", "response_format"),
        ({"output_format": "gif"}, 400, "INVALID_REQUEST_BODY", "output_format"),
        ({"model": "fake-chat"}, 400, "INVALID_REQUEST_BODY", "model"),
        ({"model": "no-such-model"}, 404, "MODEL_NOT_FOUND", "model"),
    ],
)
async def test_generation_rejects_bad_input(
    client: AsyncTestClient, change: dict[str, Any], status: int, code: str, param: str
) -> None:
    response = await client.post("/v1/images/generations", json={**GENERATE, **change})
    assert error_of(response) == (status, code, param), response.text


async def test_generation_requires_model(client: AsyncTestClient) -> None:
    response = await client.post("/v1/images/generations", json={"prompt": "a barn"})
    status, code, _ = error_of(response)
    assert (status, code) == (400, "INVALID_REQUEST_BODY")
    assert "model" in response.json()["error"]["message"]
