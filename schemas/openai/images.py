"""POST /images/generations and /images/edits (OpenAI's images API on diffusers models)."""

from __future__ import annotations

from typing import Literal

import msgspec

ResponseFormat = Literal["url", "b64_json"]
OutputFormat = Literal["png", "jpeg", "webp"]


class ImageRequestFields(msgspec.Struct, kw_only=True):
    """What generations and edits share.

    ``size`` is "WIDTHxHEIGHT" or "auto" (generations: 512x512; edits: the input image's
    size). The omniserve extras at the end are what the openai SDK sends via ``extra_body``.
    """

    prompt: str
    model: str
    n: int = 1
    size: str = "auto"
    response_format: ResponseFormat = "url"
    output_format: OutputFormat = "png"
    user: str | None = None
    # Partial-image streaming (gpt-image) is not offered; true is refused rather than ignored.
    stream: bool = False
    negative_prompt: str | None = None
    steps: int = 20
    guidance_scale: float = 7.5
    # None or -1: the server draws one.
    seed: int | None = None
    # An A1111 sampler name (as in /v3); None keeps the checkpoint's own scheduler.
    sampler_name: str | None = None


class ImageGenerationRequest(ImageRequestFields, kw_only=True):
    """JSON body of /images/generations.

    ``quality`` and ``style`` are accepted so that OpenAI clients work unchanged, but they
    have no effect: a diffusers checkpoint has no such switches (use ``steps`` and
    ``guidance_scale``). Other OpenAI-only fields (``background``, ``moderation``,
    ``output_compression``) are ignored likewise.
    """

    quality: str | None = None
    style: str | None = None


class ImageEditRequest(ImageRequestFields, kw_only=True):
    """The multipart form of /images/edits, with its files read into bytes.

    With a ``mask`` the edit is inpainting, without one img2img; ``strength`` is how far
    the result may move away from the image (1 repaints it entirely).
    """

    image: bytes
    mask: bytes | None = None
    strength: float = 0.75


class ImageData(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One image: ``url`` or ``b64_json``, whichever ``response_format`` asked for."""

    url: str | None = None
    b64_json: str | None = None


class ImagesResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    created: int
    data: list[ImageData]
    output_format: OutputFormat | None = None
