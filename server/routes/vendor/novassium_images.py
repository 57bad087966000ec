"""Novassium's synchronous generate: validate with the API's own messages, charge one credit
per sample, generate through the scheduler, resize to the requested size, store, answer URLs.

The model draws at a size it handles (the requested aspect ratio, at most
``vendor.novassium_max_side`` a side, multiples of 8); each image is then centre-cropped to
the requested width:height and resized with Lanczos, so any size the API documents
(64..16,384 a side) is answered at exactly that size, within the server's pixel limits
(``limits.max_output_pixels`` for each image, ``limits.max_request_pixels`` for all samples).
"""

from __future__ import annotations

import io
import secrets
from typing import Any, cast

from engines.base import ImageGeneration
from schemas.errors import ApiError, ErrorCode
from schemas.limits import MAX_NOVASSIUM_SEED, MIN_NOVASSIUM_PIXELS
from schemas.vendor.novassium import GenerateRequest, GenerateResponse
from server.accounts import Meter
from server.capabilities.calls import WireNames
from server.capabilities.images.encoding import store_images
from server.capabilities.images.generation import ImageGenerator
from server.routes.vendor.styles import STYLE_PRESETS, styled_prompts
from server.settings import VendorSettings
from server.storage.local import LocalStorage

ASPECT_RATIOS = {"1:1": (1, 1), "2:3": (2, 3), "16:9": (16, 9)}
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
DEFAULT_SIDE = 1024
# The smallest side the model is asked to draw.
MIN_DRAW_SIDE = 64


def _missing(message: str, param: str) -> ApiError:
    return ApiError(ErrorCode.INVALID_REQUEST_BODY, message, param=param)


def check_request(request: GenerateRequest) -> tuple[int, int]:
    """Raise with the API's messages; the output width and height. The schema has checked
    the ranges (samples, seed, each side), with the API's messages too."""
    if request.prompt is None or not request.prompt.strip():
        raise _missing("Prompt is required.", "prompt")
    if request.style_preset is None:
        raise _missing("Style preset is required.", "style_preset")
    if request.style_preset not in STYLE_PRESETS:
        raise _missing(f"Invalid style preset. Accepted values: {', '.join(STYLE_PRESETS)}.", "style_preset")
    if request.aspect_ratio is None:
        raise _missing("Aspect ratio is required.", "aspect_ratio")
    if request.aspect_ratio not in ASPECT_RATIOS:
        raise _missing(f"Invalid aspect ratio. Accepted values: {', '.join(ASPECT_RATIOS)}.", "aspect_ratio")
    if request.samples is None:
        raise _missing("Samples is required.", "samples")
    if request.output_format is None:
        raise _missing("Output format is required.", "output_format")
    if request.output_format not in OUTPUT_FORMATS:
        raise _missing(f"Invalid output format. Accepted values: {', '.join(OUTPUT_FORMATS)}.", "output_format")
    width = DEFAULT_SIDE if request.width is None else request.width
    height = DEFAULT_SIDE if request.height is None else request.height
    if width * height < MIN_NOVASSIUM_PIXELS:
        raise ApiError(ErrorCode.INVALID_IMAGE_SIZE, "Image dimensions must total at least 4,096 pixels.")
    return width, height


def draw_size(aspect_ratio: str, width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size the model draws at: the aspect ratio, its long side no larger than the
    output's or ``max_side``, both sides multiples of 8."""
    ratio_w, ratio_h = ASPECT_RATIOS[aspect_ratio]
    long_side = max(MIN_DRAW_SIDE, min(max_side, max(width, height)) // 8 * 8)
    short_side = max(MIN_DRAW_SIDE, round(long_side * min(ratio_w, ratio_h) / max(ratio_w, ratio_h) / 8) * 8)
    return (long_side, short_side) if ratio_w >= ratio_h else (short_side, long_side)


def fit_and_encode(image: Any, width: int, height: int, image_format: str) -> bytes:
    """Centre-crop to width:height, resize with Lanczos, encode. Blocking: run in a thread."""
    from PIL import Image, ImageOps

    rgb = image.convert("RGB")
    if rgb.size != (width, height):
        rgb = ImageOps.fit(rgb, (width, height), method=Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    rgb.save(buffer, format=OUTPUT_FORMATS[image_format])
    return buffer.getvalue()


def _credits(value: float | None) -> int | float | None:
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value


# The job's fields as Novassium names them.
NOVASSIUM_NAMES = WireNames({"image_num": "samples", "width": "width", "height": "height"})


class NovassiumImages:
    def __init__(
        self,
        images: ImageGenerator,
        storage: LocalStorage,
        settings: VendorSettings,
        *,
        model: str | None,
        url_ttl_s: int,
    ) -> None:
        self.images = images
        self.storage = storage
        self.settings = settings
        self.model = model
        self.url_ttl_s = url_ttl_s

    async def generate(self, request: GenerateRequest, meter: Meter, base_url: str) -> GenerateResponse:
        if self.model is None:
            raise ApiError(ErrorCode.API_NOT_FOUND, "Novassium is not enabled on this server.")
        width, height = check_request(request)
        # Each image is resized to the size asked and encoded whole: bounded before anything runs.
        self.images.output_limit.check(width, height, cast(int, request.samples), NOVASSIUM_NAMES)
        prompt, negative = styled_prompts(
            cast(str, request.style_preset), cast(str, request.prompt), request.negative_prompt
        )
        samples = cast(int, request.samples)
        draw_w, draw_h = draw_size(cast(str, request.aspect_ratio), width, height, self.settings.novassium_max_side)
        job = ImageGeneration(
            prompt=prompt,
            negative_prompt=negative,
            width=draw_w,
            height=draw_h,
            steps=self.settings.novassium_steps,
            guidance_scale=self.settings.novassium_guidance_scale,
            seed=secrets.randbelow(MAX_NOVASSIUM_SEED + 1) if request.seed is None else request.seed,
            image_num=samples,
        )
        image_format = cast(str, request.output_format)
        # One credit price per image delivered: reserved first, nothing kept on a failure.
        async with meter.images(samples) as charge:
            try:
                result = await self.images.generate(self.model, job, NOVASSIUM_NAMES)
                urls = await store_images(
                    self.storage,
                    result.images,
                    image_format,
                    base_url,
                    self.url_ttl_s,
                    # Drawn at a size the model handles, answered at exactly the size asked.
                    lambda image: fit_and_encode(image, width, height, image_format),
                )
            except ApiError as error:
                if error.status < 500 or error.retry_after is not None:
                    raise  # refusals, and a busy server (503/429 with Retry-After), keep their answer
                # Novassium's clients know one server error: the cause stays in the log.
                raise ApiError(ErrorCode.ENGINE_ERROR, "Image generation failed; please try again.") from error
            charge.add(len(urls))
        return GenerateResponse(success=True, images=urls, remaining_credits=_credits(charge.remaining))
