"""OpenAI's images API with the official openai SDK against a running omniserve (demo-sd)."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from tests.e2e.conftest import RunningServer

pytestmark = pytest.mark.e2e

MODEL = "demo-sd"
FAST = {"steps": 2, "seed": 42}


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_url, api_key=server.api_key, max_retries=0, timeout=120)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_generate_b64_json_is_deterministic_for_a_seed(client: openai.OpenAI) -> None:
    def generate() -> list[str]:
        result = client.images.generate(
            model=MODEL, prompt="a lighthouse at dusk", n=2, size="128x128", response_format="b64_json", extra_body=FAST
        )
        assert result.created > 0
        return [item.b64_json or "" for item in result.data or []]

    first = generate()
    images = [_decode(base64.b64decode(item)) for item in first]
    assert [(image.format, image.size) for image in images] == [("PNG", (128, 128))] * 2
    assert generate() == first


def test_generate_url_downloads_without_a_key(client: openai.OpenAI) -> None:
    result = client.images.generate(
        model=MODEL, prompt="a boat", size="128x128", output_format="jpeg", extra_body={"steps": 2}
    )
    assert result.output_format == "jpeg"
    [item] = result.data or []
    assert item.url is not None and item.b64_json is None and item.revised_prompt is None
    downloaded = httpx.get(item.url, timeout=30)
    assert downloaded.status_code == 200 and downloaded.headers["content-type"] == "image/jpeg"
    image = _decode(downloaded.content)
    assert (image.format, image.size) == ("JPEG", (128, 128))


def test_edit_with_mask_inpaints(client: openai.OpenAI) -> None:
    source = _png(Image.new("RGB", (128, 128), (30, 120, 200)))
    mask = Image.new("RGBA", (128, 128), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (32, 32, 96, 96))  # OpenAI's convention: transparent is edited
    result = client.images.edit(
        model=MODEL,
        image=("source.png", source, "image/png"),
        mask=("mask.png", _png(mask), "image/png"),
        prompt="a red ball",
        size="128x128",
        response_format="b64_json",
        extra_body={"steps": 2},
    )
    [item] = result.data or []
    assert _decode(base64.b64decode(item.b64_json or "")).size == (128, 128)


def test_edit_without_mask_is_img2img(client: openai.OpenAI) -> None:
    source = _png(Image.new("RGB", (144, 128), (200, 180, 40)))
    result = client.images.edit(
        model=MODEL,
        image=("source.png", source, "image/png"),
        prompt="a field of wheat",
        n=2,
        response_format="url",
        extra_body={"steps": 4, "strength": 0.5},
    )
    assert len(result.data or []) == 2
    for item in result.data or []:
        assert item.url is not None
        # No size given: the input's own size.
        assert _decode(httpx.get(item.url, timeout=30).content).size == (144, 128)


def test_bad_size_and_bad_image_are_bad_requests(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad_size:
        client.images.generate(model=MODEL, prompt="x", size="100x100", extra_body={"steps": 1})
    assert bad_size.value.code == "INVALID_IMAGE_SIZE" and bad_size.value.param == "size"
    with pytest.raises(openai.BadRequestError) as bad_image:
        client.images.edit(model=MODEL, image=("x.png", b"not an image", "image/png"), prompt="x")
    assert bad_image.value.code == "INVALID_IMAGE_FORMAT" and bad_image.value.param == "image"
    with pytest.raises(openai.BadRequestError) as not_an_image_model:
        client.images.generate(model="demo-chat-tiny", prompt="x", size="128x128")
    assert not_an_image_model.value.param == "model"
