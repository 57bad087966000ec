"""POST /images/generations and /images/edits (OpenAI's images API on diffusers models)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.constraints import GuidanceScale, Name, Prompt, PromptText, Seed, Steps
from schemas.limits import MAX_IMAGE_NUM

ResponseFormat = Literal["url", "b64_json"]
OutputFormat = Literal["png", "jpeg", "webp"]


class ImageRequestFields(msgspec.Struct, kw_only=True):
    """What generations and edits share.

    ``size`` is "WIDTHxHEIGHT" or "auto" (generations: 512x512; edits: the input image's
    size). The omniserve extras at the end are what the openai SDK sends via ``extra_body``.
    """

    prompt: Prompt
    model: Name
    # At most MAX_IMAGE_NUM, or the server's limits.max_n if lower.
    n: Annotated[int, msgspec.Meta(ge=1, le=MAX_IMAGE_NUM)] = 1
    size: str = "auto"
    response_format: ResponseFormat = "url"
    output_format: OutputFormat = "png"
    user: str | None = None
    # Partial-image streaming (gpt-image) is not offered; true is refused rather than ignored.
    stream: bool = False
    negative_prompt: PromptText | None = None
    # Not sent: the model family's default (SD 1.x / SDXL: 20 steps at guidance 7.5).
    steps: Steps | None = None
    guidance_scale: GuidanceScale | None = None
    # None or -1: the server draws one.
    seed: Seed | None = None
    # An A1111 sampler name (as in /v3); None keeps the checkpoint's own scheduler.
    sampler_name: Name | None = None


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

    image: Annotated[bytes, msgspec.Meta(description="The image: a file part named image (or image[]).")]
    mask: Annotated[bytes, msgspec.Meta(description="A file part; transparent pixels mark what to edit.")] | None = None
    # Also leaves steps x strength >= 1.
    strength: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.75


class ImageData(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One image: ``url`` or ``b64_json``, whichever ``response_format`` asked for."""

    url: str | None = None
    b64_json: str | None = None


class ImagesResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    created: int
    data: list[ImageData]
    output_format: OutputFormat | None = None
