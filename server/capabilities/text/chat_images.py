"""Images in chat messages: `image_url` content parts, for models that take images.

A part's URL is a base64 data URL or an http(s) URL. Downloads go through the server's one
outbound path (server/outbound.py: the address vetted against private ranges and pinned, one
deadline, a byte cap), so a client cannot make the server read its own network. Every image is
checked against the limits (limits.max_chat_images, max_chat_image_bytes, max_chat_image_pixels)
and decoded on the media pool, never on the event loop; the pixel count is read from the header
before any pixel is decoded. Each refusal is a 400 naming the part, e.g.
`messages[0].content[1].image_url`.

The template then sees each image as an `{"type": "image"}` part where it stood among the text
parts, which a vision model's chat template renders as its image placeholder.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable
from typing import Any

import msgspec

from engines.base import TextGenerationEngine
from engines.workpools import WorkPool, run_in
from schemas.errors import ApiError, ErrorCode
from schemas.openai.chat import ChatMessage, ContentPart, ImagePart, TextPart
from server.capabilities.images.inputs import INPUT_FORMATS
from server.errors import bad_request
from server.outbound import OutboundHttp
from server.settings import Limits

# Formats decoded for chat: the image inputs' formats, plus GIF (its first frame), which
# OpenAI's vision input also takes.
CHAT_IMAGE_FORMATS = (*INPUT_FORMATS, "GIF")


def image_part_params(messages: list[ChatMessage]) -> list[tuple[str, str]]:
    """(param, url) of every image part, in prompt order."""
    found = []
    for m, message in enumerate(messages):
        if isinstance(message.content, list):
            for p, part in enumerate(message.content):
                if isinstance(part, ImagePart):
                    found.append((f"messages[{m}].content[{p}].image_url", part.image_url.url))
    return found


def vision_content(content: list[ContentPart]) -> list[dict[str, Any]]:
    """Content parts as a vision model's chat template takes them: text, and images in place."""
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            parts.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            parts.append({"type": "image"})
        else:
            raise bad_request("This model accepts text and image content parts only.", "messages")
    return parts


def data_url_bytes(url: str, param: str, max_bytes: int) -> bytes:
    """The payload of a base64 data URL, refused past ``max_bytes`` before it is decoded."""
    header, comma, payload = url.partition(",")
    if not comma or not header.startswith("data:") or not header.endswith(";base64"):
        raise bad_request(f"{param} must be a base64 data URL (data:image/png;base64,...) or an http(s) URL.", param)
    if len(payload) // 4 * 3 > max_bytes + 2:  # base64 carries 3 bytes in 4 characters
        raise _too_large(param, max_bytes)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(ErrorCode.INVALID_IMAGE_FORMAT, f"{param} is not valid base64.", param=param) from None
    if len(data) > max_bytes:
        raise _too_large(param, max_bytes)
    return data


def decode_chat_image(data: bytes, param: str, max_pixels: int) -> Any:
    """The decoded RGB image (PIL), or a 400 naming ``param``. Blocking: run it on the media pool."""
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data), formats=CHAT_IMAGE_FORMATS)
    except Image.DecompressionBombError:
        raise _too_many_pixels(param, max_pixels) from None
    except (OSError, ValueError):  # UnidentifiedImageError is an OSError
        raise ApiError(
            ErrorCode.INVALID_IMAGE_FORMAT, f"{param} is not a readable PNG, JPEG, WebP or GIF image.", param=param
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise _too_many_pixels(param, max_pixels, width, height)
    try:
        return image.convert("RGB")  # decodes: a truncated or corrupt body fails only here
    except (OSError, ValueError, Image.DecompressionBombError):
        raise ApiError(
            ErrorCode.INVALID_IMAGE_FORMAT, f"{param} is a damaged or truncated image.", param=param
        ) from None


def _too_large(param: str, limit: int) -> ApiError:
    return ApiError(ErrorCode.IMAGE_FILE_EXCEEDS_MAX_SIZE, f"{param} is larger than {limit} bytes.", param=param)


def _too_many_pixels(param: str, limit: int, width: int = 0, height: int = 0) -> ApiError:
    size = f" is {width}x{height}, which" if width else ""
    return ApiError(
        ErrorCode.IMAGE_EXCEEDS_MAX_RESOLUTION, f"{param}{size} exceeds the limit of {limit} pixels.", param=param
    )


class ChatImages:
    """Loads the images of a chat request for a model that takes them."""

    def __init__(self, limits: Limits, outbound: OutboundHttp | None) -> None:
        self.limits = limits
        # None: this server fetches no URLs (data URLs only).
        self.outbound = outbound

    async def template_messages(
        self,
        messages: list[ChatMessage],
        engine: TextGenerationEngine,
        model: str,
        to_template: Callable[[ChatMessage], dict[str, Any]],
    ) -> tuple[list[dict[str, Any]], list[Any]]:
        """The messages as the chat template takes them (``to_template`` renders one without
        images) and the images their parts name, decoded; no images: ``to_template`` alone."""
        parts = image_part_params(messages)
        if not parts:
            return [to_template(message) for message in messages], []
        images = await self.load(parts, engine, model)
        rendered = [
            {**to_template(msgspec.structs.replace(message, content=None)), "content": vision_content(message.content)}
            if isinstance(message.content, list)
            else to_template(message)
            for message in messages
        ]
        return rendered, images

    async def load(self, parts: list[tuple[str, str]], engine: TextGenerationEngine, model: str) -> list[Any]:
        """The decoded images of ``parts`` (from ``image_part_params``), in order."""
        if not parts:
            return []
        first = parts[0][0]
        if not engine.info.accepts_images:
            raise bad_request(
                f"The model '{model}' does not take images ({first}); send text content parts only.", first
            )
        if len(parts) > self.limits.max_chat_images:
            raise bad_request(
                f"{len(parts)} images; at most {self.limits.max_chat_images} are accepted in one request.", "messages"
            )
        # One at a time: each is bounded, and the media pool is shared with every other route.
        return [await self._load_one(url, param) for param, url in parts]

    async def _load_one(self, url: str, param: str) -> Any:
        limit = self.limits.max_chat_image_bytes
        if url.startswith(("http://", "https://")):
            if self.outbound is None:
                raise bad_request(f"{param}: this server takes images as data URLs only.", param)
            data = await self.outbound.download(
                url, param=param, max_bytes=limit, too_large=lambda cap: _too_large(param, cap)
            )
        else:
            data = data_url_bytes(url, param, limit)
        return await run_in(WorkPool.MEDIA, decode_chat_image, data, param, self.limits.max_chat_image_pixels)
