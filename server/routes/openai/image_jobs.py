"""The OpenAI adapter of image generation: generations and edits onto `ImageGenerator` jobs,
answered with every image at once (the /v3 API queues tasks instead)."""

from __future__ import annotations

import base64
import re
import secrets
from typing import Any

from engines.base import ImageEngine, ImageGeneration
from engines.workpools import WorkPool, run_in
from schemas.errors import ApiError, ErrorCode
from schemas.limits import MAX_IMAGE_NUM, MAX_IMAGE_SIDE, MIN_IMAGE_SIDE, SEED_LIMIT, SIDE_MULTIPLE
from schemas.openai.images import (
    ImageData,
    ImageEditRequest,
    ImageGenerationRequest,
    ImageRequestFields,
    ImagesResponse,
)
from server.accounts import UNMETERED, Meter
from server.capabilities.calls import WireNames
from server.capabilities.images.defaults import image_defaults, image_settings
from server.capabilities.images.encoding import encode_image, store_images
from server.capabilities.images.generation import ImageGenerator
from server.capabilities.images.inputs import inpaint_mask, open_input_image
from server.capabilities.text.sampling import unix_now
from server.settings import Limits
from server.storage.local import LocalStorage

# What "auto" means for a generation: SD 1.x's native size, and cheap on any checkpoint.
DEFAULT_SIZE = (512, 512)
_SIZE_RE = re.compile(r"(\d{1,5})x(\d{1,5})")

OPENAI_IMAGE_NAMES = WireNames(
    {
        "image_num": "n",
        "width": "size",
        "height": "size",
        "sampler": "sampler_name",
        "init_image": "image",
        "mask_image": "mask",
    }
)


def parse_size(size: str, auto: tuple[int, int]) -> tuple[int, int]:
    if size == "auto":
        return auto
    match = _SIZE_RE.fullmatch(size)
    if match is None:
        raise ApiError(
            ErrorCode.INVALID_IMAGE_SIZE, f"size must be 'WIDTHxHEIGHT' or 'auto', not {size!r}.", param="size"
        )
    width, height = int(match.group(1)), int(match.group(2))
    if not all(MIN_IMAGE_SIDE <= side <= MAX_IMAGE_SIDE and side % SIDE_MULTIPLE == 0 for side in (width, height)):
        raise ApiError(
            ErrorCode.INVALID_IMAGE_SIZE,
            f"Each side of size must be a multiple of {SIDE_MULTIPLE} between {MIN_IMAGE_SIDE} and {MAX_IMAGE_SIDE}; "
            f"got {size}.",
            param="size",
        )
    return width, height


def fit_size(width: int, height: int, multiple: int = SIDE_MULTIPLE) -> tuple[int, int]:
    """An output size for an input of ``width`` x ``height``: the same aspect, scaled down
    to at most MAX_IMAGE_SIDE a side, each side a multiple of ``multiple`` (the model family's:
    8, or 16 for the flow families) and at least MIN_IMAGE_SIDE."""
    scale = min(1.0, MAX_IMAGE_SIDE / max(width, height))

    def side(value: int) -> int:
        return max(MIN_IMAGE_SIDE, int(value * scale) // multiple * multiple)

    return side(width), side(height)


def _edit_inputs(request: ImageEditRequest, multiple: int) -> tuple[tuple[int, int], bytes | None]:
    """Output size and engine mask, from the uploads (decoded here, then dropped: the engine
    decodes the bytes again at the job's size). Blocking: run in a thread."""
    image = open_input_image(request.image, "image")
    size = parse_size(request.size, fit_size(image.width, image.height, multiple))
    if request.mask is None:
        return size, None
    mask = open_input_image(request.mask, "mask")
    if mask.size != image.size:
        raise ApiError(
            ErrorCode.INVALID_IMAGE_SIZE,
            f"mask is {mask.width}x{mask.height} but image is {image.width}x{image.height}; "
            "they must be the same size.",
            param="mask",
        )
    return size, inpaint_mask(mask)


class OpenAIImages:
    def __init__(self, images: ImageGenerator, storage: LocalStorage | None, limits: Limits, *, url_ttl_s: int) -> None:
        self.images = images
        # None only where a caller builds it without an app (no file route): URL output is
        # then refused and b64_json still works.
        self.storage = storage
        self.url_ttl_s = url_ttl_s
        self.max_n = min(MAX_IMAGE_NUM, limits.max_n)

    def _check(self, request: ImageRequestFields) -> None:
        """What depends on the server; the schema has checked every fixed range."""
        if request.n > self.max_n:  # limits.max_n may be lower than the schema's bound
            raise OPENAI_IMAGE_NAMES.invalid("image_num", f"n must be between 1 and {self.max_n}.")
        if request.stream:
            raise OPENAI_IMAGE_NAMES.invalid("stream", "Streaming partial images is not supported; leave stream false.")
        if request.response_format == "url" and self.storage is None:
            raise OPENAI_IMAGE_NAMES.invalid(
                "response_format", "This server cannot store images; use response_format 'b64_json'."
            )

    @staticmethod
    def _job(
        engine: ImageEngine, request: ImageRequestFields, size: tuple[int, int], **image_inputs: Any
    ) -> ImageGeneration:
        seed = request.seed
        settings = image_settings(
            engine,
            steps=request.steps,
            guidance_scale=request.guidance_scale,
            sampler=request.sampler_name,
            names=OPENAI_IMAGE_NAMES,
        )
        return ImageGeneration(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt or "",
            width=size[0],
            height=size[1],
            steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            seed=secrets.randbelow(SEED_LIMIT) if seed is None or seed < 0 else seed,
            image_num=request.n,
            sampler=settings.sampler,
            **image_inputs,
        )

    async def generate(
        self, request: ImageGenerationRequest, base_url: str, meter: Meter = UNMETERED
    ) -> ImagesResponse:
        engine = self.images.engine(request.model, OPENAI_IMAGE_NAMES)
        self._check(request)
        job = self._job(engine, request, parse_size(request.size, DEFAULT_SIZE))
        self.images.check(engine, job, OPENAI_IMAGE_NAMES)
        return await self._run(request, job, base_url, meter)

    async def edit(self, request: ImageEditRequest, base_url: str, meter: Meter = UNMETERED) -> ImagesResponse:
        engine = self.images.engine(request.model, OPENAI_IMAGE_NAMES)
        self._check(request)
        multiple = image_defaults(engine).side_multiple
        size, mask = await run_in(WorkPool.MEDIA, _edit_inputs, request, multiple)
        job = self._job(engine, request, size, init_image=request.image, mask_image=mask, strength=request.strength)
        self.images.check(engine, job, OPENAI_IMAGE_NAMES)
        return await self._run(request, job, base_url, meter)

    async def _run(
        self, request: ImageRequestFields, job: ImageGeneration, base_url: str, meter: Meter
    ) -> ImagesResponse:
        # One price per image delivered: reserved first, nothing kept if the work fails or the
        # client leaves before the answer is ready.
        async with meter.images(job.image_num) as charge:
            result = await self.images.generate(request.model, job, OPENAI_IMAGE_NAMES)
            data = await self._encode(request, result.images, base_url)
            charge.add(len(data))
        return ImagesResponse(created=unix_now(), data=data, output_format=request.output_format)

    async def _encode(self, request: ImageRequestFields, images: list[Any], base_url: str) -> list[ImageData]:
        output_format = request.output_format
        if request.response_format == "b64_json" or self.storage is None:
            encoded = await run_in(WorkPool.MEDIA, lambda: [encode_image(image, output_format) for image in images])
            return [ImageData(b64_json=base64.b64encode(item).decode("ascii")) for item in encoded]
        urls = await store_images(
            self.storage,
            images,
            output_format,
            base_url,
            self.url_ttl_s,
            lambda image: encode_image(image, output_format),
        )
        return [ImageData(url=url) for url in urls]
