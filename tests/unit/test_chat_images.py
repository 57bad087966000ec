"""Images in chat messages (server/capabilities/text/chat_images.py): the parts found and named,
data URLs, downloads through the outbound guard, and the decode limits; engines are fakes, the
HTTP servers are real sockets on loopback."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any, cast

import msgspec
import pytest

from engines.base import EngineInfo, TextGenerationEngine
from schemas.errors import ApiError, ErrorCode
from schemas.openai.chat import ChatMessage
from server.capabilities.text.chat import message_to_template
from server.capabilities.text.chat_images import (
    ChatImages,
    data_url_bytes,
    decode_chat_image,
    image_part_params,
)
from server.outbound import OutboundHttp
from server.settings import Limits

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def png(size: tuple[int, int] = (8, 6), colour: tuple[int, int, int] = (255, 0, 0)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def messages(*urls: str) -> list[ChatMessage]:
    content: list[dict[str, Any]] = [{"type": "text", "text": "look"}]
    content += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    raw = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}]
    return msgspec.convert(raw, list[ChatMessage])


def engine(accepts_images: bool) -> TextGenerationEngine:
    info = EngineInfo(max_model_len=512, vocab_size=100, accepts_images=accepts_images)
    return cast(TextGenerationEngine, SimpleNamespace(info=info))


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


def answering(body: bytes) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = f"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        writer.close()

    return handle


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    await asyncio.sleep(30)  # never answers; the client's deadline ends the exchange
    writer.close()


def test_image_parts_are_named_by_their_place_in_the_messages() -> None:
    found = image_part_params(messages("data:a", "https://example.com/b.png"))
    assert found == [
        ("messages[1].content[1].image_url", "data:a"),
        ("messages[1].content[2].image_url", "https://example.com/b.png"),
    ]


async def test_messages_render_images_as_image_parts_in_place() -> None:
    images = ChatImages(Limits(), None)
    rendered, decoded = await images.template_messages(
        messages(data_url(png())), engine(True), "vlm", message_to_template
    )
    assert rendered == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image"}]},
    ]
    assert [image.size for image in decoded] == [(8, 6)]
    assert decoded[0].mode == "RGB"


async def test_text_only_messages_render_as_before() -> None:
    plain = messages()
    rendered, decoded = await ChatImages(Limits(), None).template_messages(
        plain, engine(False), "chat", message_to_template
    )
    assert rendered == [message_to_template(message) for message in plain]
    assert decoded == []


async def test_a_model_without_images_refuses_them_naming_the_part() -> None:
    with pytest.raises(ApiError) as caught:
        await ChatImages(Limits(), None).template_messages(
            messages(data_url(png())), engine(False), "demo-chat", message_to_template
        )
    assert caught.value.status == 400
    assert caught.value.param == "messages[1].content[1].image_url"
    assert "does not take images" in caught.value.message


async def test_too_many_images_are_refused_before_any_is_decoded() -> None:
    images = ChatImages(Limits(max_chat_images=1), None)
    with pytest.raises(ApiError) as caught:
        await images.template_messages(messages("data:x", "data:y"), engine(True), "vlm", message_to_template)
    assert caught.value.status == 400 and caught.value.param == "messages"


def test_data_urls_must_be_base64_and_within_the_byte_limit() -> None:
    data = png()
    assert data_url_bytes(data_url(data), "p", len(data)) == data
    with pytest.raises(ApiError) as big:
        data_url_bytes(data_url(data), "p", len(data) - 1)
    assert big.value.code is ErrorCode.IMAGE_FILE_EXCEEDS_MAX_SIZE and big.value.param == "p"
    # Refused from its length alone: a huge payload is never decoded.
    with pytest.raises(ApiError) as huge:
        data_url_bytes("data:image/png;base64," + "A" * 4_000_000, "p", 1000)
    assert huge.value.code is ErrorCode.IMAGE_FILE_EXCEEDS_MAX_SIZE
    for bad in ("data:image/png,rawbytes", "file:///etc/passwd", "just text"):
        with pytest.raises(ApiError) as refused:
            data_url_bytes(bad, "p", 1000)
        assert refused.value.status == 400 and refused.value.param == "p"
    with pytest.raises(ApiError) as garbled:
        data_url_bytes("data:image/png;base64,@@@@", "p", 1000)
    assert garbled.value.code is ErrorCode.INVALID_IMAGE_FORMAT


def test_decoding_bounds_pixels_and_refuses_what_is_no_image() -> None:
    assert decode_chat_image(png((20, 10)), "p", 200).size == (20, 10)
    with pytest.raises(ApiError) as many:
        decode_chat_image(png((20, 11)), "p", 200)
    assert many.value.code is ErrorCode.IMAGE_EXCEEDS_MAX_RESOLUTION and "20x11" in many.value.message
    with pytest.raises(ApiError) as garbage:
        decode_chat_image(b"GIF89a but not really", "p", 200)
    assert garbage.value.code is ErrorCode.INVALID_IMAGE_FORMAT
    with pytest.raises(ApiError) as truncated:
        decode_chat_image(png((64, 64))[:60], "p", 10_000)
    assert truncated.value.code is ErrorCode.INVALID_IMAGE_FORMAT


async def test_http_images_are_downloaded_through_the_outbound_guard() -> None:
    body = png((5, 5))
    async with serving(answering(body)) as port:
        images = ChatImages(Limits(), OutboundHttp(allow_private=True, timeout_s=5))
        decoded = await images.load(
            [("messages[0].content[0].image_url", f"http://127.0.0.1:{port}/i.png")], engine(True), "vlm"
        )
    assert [image.size for image in decoded] == [(5, 5)]


async def test_private_addresses_are_refused_naming_the_part() -> None:
    async with serving(answering(png())) as port:
        images = ChatImages(Limits(), OutboundHttp(allow_private=False, timeout_s=5))
        with pytest.raises(ApiError) as caught:
            await images.load([("messages[0].content[1].image_url", f"http://127.0.0.1:{port}/")], engine(True), "m")
    assert caught.value.status == 400 and caught.value.param == "messages[0].content[1].image_url"


async def test_downloads_are_bounded_in_bytes_and_time() -> None:
    param = "messages[0].content[1].image_url"
    async with serving(answering(png((64, 64)))) as port:
        images = ChatImages(Limits(max_chat_image_bytes=50), OutboundHttp(allow_private=True, timeout_s=5))
        with pytest.raises(ApiError) as big:
            await images.load([(param, f"http://127.0.0.1:{port}/")], engine(True), "m")
    assert big.value.code is ErrorCode.IMAGE_FILE_EXCEEDS_MAX_SIZE and big.value.param == param
    async with serving(silent) as port:
        images = ChatImages(Limits(), OutboundHttp(allow_private=True, timeout_s=0.5))
        with pytest.raises(ApiError) as slow:
            await images.load([(param, f"http://127.0.0.1:{port}/")], engine(True), "m")
    assert slow.value.status == 400 and slow.value.param == param and "within" in slow.value.message


async def test_without_an_outbound_path_only_data_urls_are_taken() -> None:
    with pytest.raises(ApiError) as caught:
        await ChatImages(Limits(), None).load([("p", "https://example.com/a.png")], engine(True), "m")
    assert caught.value.status == 400 and caught.value.param == "p"
