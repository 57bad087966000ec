"""/v3/remove-background, /v3/replace-background and /v3/cleanup through the real app, with a fake
segmenter (foreground: the bright-red pixels) and the fake image engine (a solid colour)."""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from PIL import Image

from engines.base import ModelKind, ModelSpec, SegmentationEngine
from engines.errors import WrongModelKind
from engines.model_files import infer_model
from engines.registry import CatalogError
from server.app import build_components, create_app
from server.capabilities.image_editor import work_size
from server.composition import Components
from server.settings import Settings
from tests.fakes import FAKE_SPECS, FakeImageEngine, _FakeBase, fake_factory

RED, BLUE = (220, 20, 20), (20, 20, 220)
SEGMENTER = ModelSpec(name="fake-segmenter", kind=ModelKind.SEGMENTATION, engine="fake-segmentation", path="-")


class FakeSegmenter(_FakeBase):
    """Foreground: every pixel whose red is above 128 (255), the rest background (0)."""

    async def segment(self, image: Any) -> Any:
        return image.convert("RGB").getchannel("R").point(lambda red: 255 if red > 128 else 0)


def make_state(tmp_path: Path, specs: list[ModelSpec] | None = None, **settings: object) -> Components:
    config = msgspec.convert({"data_dir": str(tmp_path), **settings}, Settings)
    factories = {"fake": fake_factory, "fake-segmentation": FakeSegmenter}
    return build_components(config, specs if specs is not None else [*FAKE_SPECS, SEGMENTER], factories)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[AsyncTestClient]:
    state = make_state(tmp_path)
    async with AsyncTestClient(create_app(state)) as test_client:
        await state.load_task  # type: ignore[misc]
        test_client.app_state = state  # type: ignore[attr-defined]
        yield test_client


def half_red(size: tuple[int, int] = (40, 30), fmt: str = "PNG") -> bytes:
    """The left half red (the fake segmenter's foreground), the right half blue."""
    image = Image.new("RGB", size, BLUE)
    image.paste(RED, (0, 0, size[0] // 2, size[1]))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def answered(response: Any, image_type: str = "png") -> Image.Image:
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"image_file", "image_type"} and body["image_type"] == image_type
    image = Image.open(io.BytesIO(base64.b64decode(body["image_file"])))
    assert image.format == {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}[image_type]
    return image


def refused(response: Any, status: int, reason: str, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["reason"] == reason, body
    if param is not None:
        assert body["metadata"]["param"] == param, body


def painter(client: AsyncTestClient) -> FakeImageEngine:
    engine = client.app_state.scheduler.registry.get("fake-sd")  # type: ignore[attr-defined]
    assert isinstance(engine, FakeImageEngine)
    return engine


# -- remove-background ------------------------------------------------------------------------


async def test_remove_background_puts_the_mask_in_the_alpha_channel(client: AsyncTestClient) -> None:
    image = answered(await client.post("/v3/remove-background", json={"image_file": b64(half_red())}))
    assert (image.mode, image.size) == ("RGBA", (40, 30))
    assert image.getpixel((5, 5)) == (*RED, 255)  # the foreground, opaque and unchanged
    assert image.getpixel((35, 5))[3] == 0  # the background, transparent
    assert image.getchannel("A").getextrema() == (0, 255)


async def test_remove_background_as_webp_keeps_alpha_and_as_jpeg_flattens_onto_white(
    client: AsyncTestClient,
) -> None:
    body: dict[str, Any] = {"image_file": b64(half_red(fmt="JPEG")), "extra": {"response_image_type": "webp"}}
    webp = answered(await client.post("/v3/remove-background", json=body), "webp")
    assert (webp.mode, webp.size) == ("RGBA", (40, 30))
    body["extra"] = {"response_image_type": "jpeg", "enterprise_plan": {"enabled": False}}
    jpeg = answered(await client.post("/v3/remove-background", json=body), "jpeg")
    assert (jpeg.mode, jpeg.size) == ("RGB", (40, 30))
    assert all(channel > 240 for channel in jpeg.getpixel((35, 15)))  # the removed background is white
    assert jpeg.getpixel((5, 15))[0] > 180  # the subject is still red


async def test_a_data_url_image_is_accepted(client: AsyncTestClient) -> None:
    data_url = "data:image/png;base64," + b64(half_red((16, 16)))
    image = answered(await client.post("/v3/remove-background", json={"image_file": data_url}))
    assert image.size == (16, 16)


# -- replace-background -----------------------------------------------------------------------


async def test_replace_background_repaints_only_the_background(client: AsyncTestClient) -> None:
    response = await client.post(
        "/v3/replace-background", json={"image_file": b64(half_red((50, 30))), "prompt": "a beach at dusk"}
    )
    image = answered(response)
    assert (image.mode, image.size) == ("RGB", (50, 30))
    assert image.getpixel((3, 3)) == RED  # the foreground keeps its own pixels
    job = painter(client).last_job
    assert job is not None
    assert (job.prompt, job.strength) == ("a beach at dusk", 1.0)
    assert image.getpixel((45, 20)) == (job.seed % 256, 40, 90)  # the fake painter's colour
    # The repainted area is the background: white in the mask the painter got.
    assert job.mask_image is not None
    with Image.open(io.BytesIO(job.mask_image)) as mask:
        assert mask.size == (50, 30)
        assert (mask.getpixel((3, 3)), mask.getpixel((45, 20))) == (0, 255)
    assert job.width % 16 == 0 and job.height % 16 == 0 and min(job.width, job.height) >= 64


async def test_replace_background_needs_a_prompt_and_holds_its_own_limits(tmp_path: Path) -> None:
    state = make_state(tmp_path, image_tools={"replace_background_max_side": 40, "replace_background_max_pixels": 900})
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        image = b64(half_red((30, 20)))
        refused(await client.post("/v3/replace-background", json={"image_file": image}), 400, "INVALID_REQUEST_BODY")
        blank = await client.post("/v3/replace-background", json={"image_file": image, "prompt": "  "})
        refused(blank, 400, "INVALID_REQUEST_BODY", "prompt")
        wide = await client.post("/v3/replace-background", json={"image_file": b64(half_red((41, 10))), "prompt": "x"})
        refused(wide, 400, "INVALID_IMAGE_SIZE", "image_file")
        many = await client.post("/v3/replace-background", json={"image_file": b64(half_red((31, 30))), "prompt": "x"})
        refused(many, 400, "IMAGE_EXCEEDS_MAX_RESOLUTION", "image_file")
        # remove-background is not bound by replace-background's limits.
        answered(await client.post("/v3/remove-background", json={"image_file": b64(half_red((41, 30)))}))


# -- cleanup ----------------------------------------------------------------------------------


def square_mask(size: tuple[int, int], box: tuple[int, int, int, int], mode: str = "L") -> bytes:
    mask = Image.new(mode, size, 0)
    mask.paste(255 if mode == "L" else (255, 255, 255), box)
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


async def test_cleanup_repaints_only_the_masked_area(client: AsyncTestClient) -> None:
    original = half_red((40, 30))
    mask = square_mask((40, 30), (10, 10, 20, 20), mode="RGB")
    image = answered(await client.post("/v3/cleanup", json={"image_file": b64(original), "mask_file": b64(mask)}))
    assert (image.mode, image.size) == ("RGB", (40, 30))
    job = painter(client).last_job
    assert job is not None and (job.prompt, job.negative_prompt, job.strength) == ("", "", 1.0)
    assert image.getpixel((15, 15)) == (job.seed % 256, 40, 90)  # inside the mask: repainted
    assert image.getpixel((2, 2)) == RED and image.getpixel((35, 25)) == BLUE  # outside: untouched


async def test_cleanup_with_an_empty_mask_returns_the_image_without_repainting(client: AsyncTestClient) -> None:
    original = half_red((40, 30))
    empty = square_mask((40, 30), (0, 0, 0, 0))
    body = {"image_file": b64(original), "mask_file": b64(empty), "extra": {"response_image_type": "png"}}
    image = answered(await client.post("/v3/cleanup", json=body))
    assert painter(client).last_job is None
    assert list(image.convert("RGB").getdata()) == list(Image.open(io.BytesIO(original)).convert("RGB").getdata())


async def test_cleanup_refuses_a_mask_of_another_size(client: AsyncTestClient) -> None:
    body = {"image_file": b64(half_red((40, 30))), "mask_file": b64(square_mask((30, 40), (0, 0, 5, 5)))}
    response = await client.post("/v3/cleanup", json=body)
    refused(response, 400, "INVALID_IMAGE_SIZE", "mask_file")
    assert "40x30" in response.json()["message"]
    missing = await client.post("/v3/cleanup", json={"image_file": body["image_file"]})
    refused(missing, 400, "INVALID_REQUEST_BODY")
    assert "mask_file" in missing.json()["message"]
    not_image = await client.post("/v3/cleanup", json={**body, "mask_file": b64(b"not an image")})
    refused(not_image, 400, "INVALID_IMAGE_FORMAT", "mask_file")


# -- inputs shared by the three tools ---------------------------------------------------------

TOOLS = [
    ("/v3/remove-background", {}),
    ("/v3/replace-background", {"prompt": "a forest"}),
    ("/v3/cleanup", {"mask_file": b64(square_mask((40, 30), (0, 0, 5, 5)))}),
]


@pytest.mark.parametrize(("path", "fields"), TOOLS)
async def test_bad_images_are_refused_naming_image_file(
    client: AsyncTestClient, path: str, fields: dict[str, Any]
) -> None:
    refused(await client.post(path, json={"image_file": "%%%", **fields}), 400, "INVALID_IMAGE_FORMAT", "image_file")
    not_image = await client.post(path, json={"image_file": b64(b"GIF89a not really"), **fields})
    refused(not_image, 400, "INVALID_IMAGE_FORMAT", "image_file")
    truncated = await client.post(path, json={"image_file": b64(half_red()[:60]), **fields})
    refused(truncated, 400, "INVALID_IMAGE_FORMAT", "image_file")
    wrong_type = await client.post(
        path, json={"image_file": b64(half_red()), "extra": {"response_image_type": "gif"}, **fields}
    )
    refused(wrong_type, 400, "INVALID_REQUEST_BODY")
    empty = await client.post(path, content=b"", headers={"content-type": "application/json"})
    refused(empty, 400, "INVALID_REQUEST_BODY")


async def test_byte_and_pixel_limits_are_the_settings(tmp_path: Path) -> None:
    state = make_state(tmp_path, image_tools={"max_image_bytes": 2000, "max_image_pixels": 1500})
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        noisy = io.BytesIO()
        Image.frombytes("RGB", (30, 30), os.urandom(30 * 30 * 3)).save(noisy, format="PNG")
        assert len(noisy.getvalue()) > 2000
        too_big = await client.post("/v3/remove-background", json={"image_file": b64(noisy.getvalue())})
        refused(too_big, 400, "IMAGE_FILE_EXCEEDS_MAX_SIZE", "image_file")
        too_many = await client.post("/v3/remove-background", json={"image_file": b64(half_red((50, 31)))})
        refused(too_many, 400, "IMAGE_EXCEEDS_MAX_RESOLUTION", "image_file")
        mask = b64(square_mask((50, 31), (0, 0, 5, 5)))
        big_mask = await client.post("/v3/cleanup", json={"image_file": b64(half_red((30, 20))), "mask_file": mask})
        refused(big_mask, 400, "IMAGE_EXCEEDS_MAX_RESOLUTION", "mask_file")
        answered(await client.post("/v3/remove-background", json={"image_file": b64(half_red((50, 30)))}))


async def test_bodies_past_the_app_limit_reach_the_image_checks(client: AsyncTestClient) -> None:
    # 12 MiB of base64: past limits.max_body_bytes (10 MiB), within the tools' own body limit.
    junk = b64(b"\0" * (9 * 1024 * 1024))
    refused(await client.post("/v3/remove-background", json={"image_file": junk}), 400, "INVALID_IMAGE_FORMAT")


# -- which models serve the tools -------------------------------------------------------------


async def test_tools_whose_model_is_off_answer_404(tmp_path: Path) -> None:
    state = make_state(tmp_path, image_tools={"segmentation_model": ""})
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        for path, fields in TOOLS[:2]:
            response = await client.post(path, json={"image_file": b64(half_red()), **fields})
            refused(response, 404, "API_NOT_FOUND")
            assert "image_tools.segmentation_model" in response.json()["message"]
        # cleanup needs no segmenter.
        answered(await client.post("/v3/cleanup", json={"image_file": b64(half_red()), **TOOLS[2][1]}))


async def test_a_catalog_without_a_segmenter_serves_cleanup_only(tmp_path: Path) -> None:
    state = make_state(tmp_path, FAKE_SPECS)
    assert (state.image_editor.segmentation_model, state.image_editor.inpainting_model) == (None, "fake-sd")


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        ("segmentation_model", "no-such-model", "is not in the catalog"),
        ("segmentation_model", "fake-sd", "is a image model, not a segmentation model"),
        ("inpainting_model", "fake-segmenter", "is a segmentation model, not a image model"),
        ("inpainting_model", "fake-chat", "is a chat model, not a image model"),
    ],
)
def test_a_configured_model_of_another_kind_stops_startup(
    tmp_path: Path, setting: str, value: str, problem: str
) -> None:
    with pytest.raises(CatalogError, match=f"image_tools.{setting} '{value}' {problem}"):
        make_state(tmp_path, image_tools={setting: value})


def test_repainting_runs_at_a_bounded_size_in_multiples_of_16() -> None:
    assert work_size(512, 512, 1024) == (512, 512)
    assert work_size(4000, 3000, 1024) == (1024, 768)
    assert work_size(1000, 77, 1024) == (992, 64)  # never below 64 a side
    assert work_size(40, 30, 1024) == (64, 64)
    width, height = work_size(4096, 4095, 1000)
    assert width <= 1000 and height <= 1000 and width % 16 == height % 16 == 0


def test_settings_refuse_nonsense() -> None:
    for bad in ({"max_image_bytes": 0}, {"inpaint_max_side": 4}, {"inpaint_steps": 0}):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"image_tools": bad}, Settings)


def test_a_segformer_folder_is_served_as_segmentation(tmp_path: Path) -> None:
    config = {"architectures": ["SegformerForSemanticSegmentation"], "model_type": "segformer"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    inferred = infer_model(tmp_path)
    assert (inferred.kind, inferred.engine) == (ModelKind.SEGMENTATION, "transformers")


def test_another_kind_leased_as_a_segmenter_is_refused_by_name(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    with pytest.raises(WrongModelKind, match="'fake-sd' is a image model and does not serve background removal"):
        state.scheduler.engine("fake-sd", SegmentationEngine)


async def test_each_answer_costs_one_image_and_a_failure_costs_nothing(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    info, key = state.keystore.create("tester")
    state.keystore.set_credits(info.id, 2)
    auth = {"Authorization": f"Bearer {key}"}
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        answered(await client.post("/v3/remove-background", json={"image_file": b64(half_red())}, headers=auth))
        assert state.keystore.account(info.id).credits == 1  # type: ignore[union-attr]
        bad_mask = {"image_file": b64(half_red()), "mask_file": b64(square_mask((8, 8), (0, 0, 4, 4)))}
        refused(await client.post("/v3/cleanup", json=bad_mask, headers=auth), 400, "INVALID_IMAGE_SIZE")
        assert state.keystore.account(info.id).credits == 1  # type: ignore[union-attr]
        answered(await client.post("/v3/cleanup", json={**bad_mask, **TOOLS[2][1]}, headers=auth))
        assert state.keystore.account(info.id).credits == 0  # type: ignore[union-attr]
        broke = await client.post("/v3/remove-background", json={"image_file": b64(half_red())}, headers=auth)
        refused(broke, 400, "BILLING_BALANCE_NOT_ENOUGH")


async def test_an_input_with_alpha_keeps_its_transparent_pixels(client: AsyncTestClient) -> None:
    source = Image.open(io.BytesIO(half_red())).convert("RGBA")
    source.putpixel((2, 2), (*RED, 0))  # transparent, though the segmenter calls it foreground
    buffer = io.BytesIO()
    source.save(buffer, format="PNG")
    image = answered(await client.post("/v3/remove-background", json={"image_file": b64(buffer.getvalue())}))
    assert (image.getpixel((2, 2))[3], image.getpixel((5, 5))[3], image.getpixel((35, 5))[3]) == (0, 255, 0)
