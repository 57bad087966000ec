"""Novita's synchronous image tools against a running omniserve, through novita-client's own
`img2prompt` and `reimagine`, on the demo catalog's tiny captioner and variation pipeline."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from novita_client import NovitaClient
from PIL import Image

from tests.e2e.conftest import RunningServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def novita(server: RunningServer) -> NovitaClient:
    return NovitaClient(server.api_key, base_url=server.base_url)


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_img2prompt_answers_the_captioners_words(novita: NovitaClient) -> None:
    answer = novita.img2prompt(noise((64, 48)))
    # Random weights write arbitrary words, but always some: the demo entry asks for at least 8 tokens.
    assert isinstance(answer.prompt, str) and answer.prompt.strip()
    assert novita.img2prompt(noise((64, 48))).prompt == answer.prompt  # greedy decoding of the same pixels


@pytest.mark.parametrize("image_type", ["png", "jpeg", "webp"])
def test_reimagine_answers_a_variation_of_the_inputs_size(novita: NovitaClient, image_type: str) -> None:
    answer = novita.reimagine(noise((72, 40)), response_image_type=image_type)
    assert answer.image_type == image_type
    with Image.open(io.BytesIO(base64.b64decode(answer.image_file))) as image:
        assert image.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[image_type]
        assert image.size == (72, 40)


def test_reimagine_draws_a_new_variation_each_call(novita: NovitaClient) -> None:
    # No seed in Novita's body: each call draws one, so two calls differ.
    first = novita.reimagine(noise((32, 32)), response_image_type="png").image_file
    second = novita.reimagine(noise((32, 32)), response_image_type="png").image_file
    assert first != second


def test_bad_input_is_refused_in_the_v3_envelope(server: RunningServer) -> None:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    buffer = io.BytesIO()
    noise((1025, 8)).save(buffer, format="PNG")  # past Novita's 1024x1024 for reimagine
    wide = base64.b64encode(buffer.getvalue()).decode()
    cases = [
        ("/v3/reimagine", {"image_file": wide}, "IMAGE_EXCEEDS_MAX_RESOLUTION"),
        ("/v3/img2prompt", {"image_file": "not an image"}, "INVALID_IMAGE_FORMAT"),
        ("/v3/reimagine", {"image_file": wide, "extra": {"response_image_type": "gif"}}, "INVALID_REQUEST_BODY"),
    ]
    for path, body, reason in cases:
        response = httpx.post(server.base_url + path, json=body, headers=headers, timeout=60)
        assert response.status_code == 400, response.text
        assert (response.json()["code"], response.json()["reason"]) == (400, reason)
    # The same image is within img2prompt's limit (2048x2048).
    answered = httpx.post(server.base_url + "/v3/img2prompt", json={"image_file": wide}, headers=headers, timeout=60)
    assert answered.status_code == 200 and answered.json()["prompt"].strip()
