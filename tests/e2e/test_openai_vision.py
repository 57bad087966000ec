"""Chat with images through the official openai SDK against a running omniserve: data URLs and
http URLs (the e2e server allows private URLs, so a loopback image server is reachable) on the
demo-vlm model; refusals name the part."""

from __future__ import annotations

import base64
import io
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest

from tests.e2e.conftest import RunningServer

pytestmark = pytest.mark.e2e

VLM = "demo-vlm"


def png(size: tuple[int, int], noise: bool = False) -> bytes:
    from PIL import Image

    image = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)) if noise else Image.new("RGB", size, "red")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def ask(*image_urls: str) -> list[Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": "Describe the picture."}]
    content += [{"type": "image_url", "image_url": {"url": url}} for url in image_urls]
    return [{"role": "user", "content": content}]


class ImageHost:
    """A loopback HTTP server with one PNG at /image.png."""

    def __init__(self, body: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200 if self.path == "/image.png" else 404)
                self.send_header("content-type", "image/png")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/image.png"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_url, api_key=server.api_key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def host() -> Iterator[ImageHost]:
    served = ImageHost(png((64, 48)))
    yield served
    served.server.shutdown()


def test_images_by_data_url_and_http_url_count_in_the_prompt(client: openai.OpenAI, host: ImageHost) -> None:
    def create(*urls: str) -> Any:
        return client.chat.completions.create(
            model=VLM, messages=ask(*urls), max_tokens=4, extra_body={"ignore_eos": True}
        )

    text_only, by_data, both = create(), create(data_url(png((30, 20)))), create(data_url(png((30, 20))), host.url)
    per_image = by_data.usage.prompt_tokens - text_only.usage.prompt_tokens
    assert per_image > 0
    assert both.usage.prompt_tokens == text_only.usage.prompt_tokens + 2 * per_image
    for result in (by_data, both):
        assert result.usage.completion_tokens == 4
        # Random weights may pick special tokens, which decode to nothing: the tokens are the proof.
        assert result.choices[0].finish_reason == "length" and result.choices[0].message.content is not None


def test_an_oversize_image_is_refused_naming_its_part(client: openai.OpenAI) -> None:
    # The e2e server takes images up to 64 KiB (limits.max_chat_image_bytes); noise does not compress.
    big = data_url(png((160, 160), noise=True))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=VLM, messages=ask(data_url(png((8, 8))), big), max_tokens=2)
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == "messages[0].content[2].image_url"  # type: ignore[index]


def test_a_model_without_vision_refuses_images(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="demo-chat", messages=ask(data_url(png((8, 8)))), max_tokens=2)
    assert caught.value.body["param"] == "messages[0].content[1].image_url"  # type: ignore[index]
    assert "does not take images" in caught.value.message
