"""Novita's synchronous image tools against a running omniserve, through novita-client's own
methods: remove_background, replace_background, cleanup. The server runs the demo catalog:
`demo-segmenter` finds the foreground, `demo-sd` repaints."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from novita_client import NovitaClient
from novita_client.exceptions import NovitaResponseError
from PIL import Image

from tests.e2e.conftest import RunningServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def novita(server: RunningServer) -> NovitaClient:
    return NovitaClient(server.api_key, base_url=server.base_url)


def subject(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A red square on a blue ground."""
    image = Image.new("RGB", size, (20, 40, 200))
    image.paste((220, 30, 30), (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4))
    return image


def decoded(image_file: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(image_file)))
    image.load()
    return image


def test_remove_background_answers_an_image_with_alpha(novita: NovitaClient) -> None:
    source = subject()
    result = novita.remove_background(source, response_image_type="png")
    assert result.image_type == "png"
    image = decoded(result.image_file)
    assert (image.format, image.mode, image.size) == ("PNG", "RGBA", source.size)
    assert image.convert("RGB").tobytes() == source.tobytes()  # only the alpha channel is new
    webp = decoded(novita.remove_background(source, response_image_type="webp").image_file)
    assert (webp.format, webp.mode, webp.size) == ("WEBP", "RGBA", source.size)
    # novita-client asks for JPEG by default: no alpha there, the size still the input's.
    default = novita.remove_background(source)
    jpeg = decoded(default.image_file)
    assert (default.image_type, jpeg.format, jpeg.mode, jpeg.size) == ("jpeg", "JPEG", "RGB", source.size)


def test_replace_background_keeps_the_input_size(novita: NovitaClient) -> None:
    source = subject((120, 72))
    result = novita.replace_background(source, prompt="a sunny beach", response_image_type="png")
    image = decoded(result.image_file)
    assert (result.image_type, image.format, image.size) == ("png", "PNG", source.size)


def test_cleanup_repaints_the_masked_area_only(novita: NovitaClient) -> None:
    source = subject()
    mask = Image.new("L", source.size, 0)
    mask.paste(255, (30, 20, 60, 44))
    result = novita.cleanup(source, mask, response_image_type="png")
    image = decoded(result.image_file).convert("RGB")
    assert image.size == source.size
    assert image.getpixel((2, 2)) == source.getpixel((2, 2))  # outside the mask: the input's pixels
    assert image.crop((30, 20, 60, 44)).tobytes() != source.crop((30, 20, 60, 44)).tobytes()


def test_a_mask_of_another_size_is_refused_naming_mask_file(novita: NovitaClient, server: RunningServer) -> None:
    source = subject()
    with pytest.raises(NovitaResponseError, match="400") as refused:
        novita.cleanup(source, Image.new("L", (64, 96), 255), response_image_type="png")
    assert "mask_file" in str(refused.value)
    # The unified /v3 envelope, as a plain HTTP client sees it.
    buffer = io.BytesIO()
    source.save(buffer, format="PNG")
    body = {"image_file": base64.b64encode(buffer.getvalue()).decode(), "mask_file": "not base64 %%"}
    response = httpx.post(
        f"{server.base_url}/v3/cleanup", json=body, headers={"Authorization": f"Bearer {server.api_key}"}, timeout=60
    )
    assert response.status_code == 400
    assert response.json() == {
        "code": 400,
        "reason": "INVALID_IMAGE_FORMAT",
        "message": response.json()["message"],
        "metadata": {"param": "mask_file"},
    }
