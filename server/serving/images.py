"""POST /images/generations and /images/edits on the image engines."""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import uuid
from typing import Any, cast

from engines.base import ImageEngine, ImageGeneration, ModelKind
from engines.image.samplers import SAMPLERS
from engines.scheduler import Scheduler
from schemas.errors import ApiError, ErrorCode
from schemas.limits import MAX_IMAGE_NUM, MAX_IMAGE_SIDE, MIN_IMAGE_SIDE, SEED_LIMIT, SIDE_MULTIPLE
from schemas.openai.images import (
    ImageData,
    ImageEditRequest,
    ImageGenerationRequest,
    ImageRequestFields,
    ImagesResponse,
)
from server.capabilities.images.encoding import encode_image
from server.capabilities.images.inputs import inpaint_mask, open_input_image
from server.serving.common import bad_request, require_kind, unix_now
from server.settings import Limits
from server.storage.local import LocalStorage
from server.telemetry.genai import image_attributes, inference

# What "auto" means for a generation: SD 1.x's native size, and cheap on any checkpoint.
DEFAULT_SIZE = (512, 512)
_SIZE_RE = re.compile(r"(\d{1,5})x(\d{1,5})")


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


def fit_size(width: int, height: int) -> tuple[int, int]:
    """An output size for an input of ``width`` x ``height``: the same aspect, scaled down
    to at most MAX_IMAGE_SIDE a side, each side a multiple of 8 and at least MIN_IMAGE_SIDE."""
    scale = min(1.0, MAX_IMAGE_SIDE / max(width, height))

    def side(value: int) -> int:
        return max(MIN_IMAGE_SIDE, int(value * scale) // SIDE_MULTIPLE * SIDE_MULTIPLE)

    return side(width), side(height)


class ImageService:
    """Runs each request to completion and answers with every image, as the OpenAI API does
    (the /v3 API queues tasks instead)."""

    def __init__(self, scheduler: Scheduler, storage: LocalStorage | None, limits: Limits, *, url_ttl_s: int) -> None:
        self.scheduler = scheduler
        # None only where a caller builds services without an app (no file route): URL
        # output is then refused and b64_json still works.
        self.storage = storage
        self.url_ttl_s = url_ttl_s
        self.max_n = min(MAX_IMAGE_NUM, limits.max_n)

    def _check(self, request: ImageRequestFields) -> None:
        """What depends on the model and the server; the schema has checked every fixed range."""
        engine = self.scheduler.engine(request.model)  # 404 for a name the catalog lacks
        require_kind(request.model, ModelKind.IMAGE, engine.spec.kind, "images")
        if request.n > self.max_n:  # limits.max_n may be lower than the schema's bound
            raise bad_request(f"n must be between 1 and {self.max_n}.", "n")
        if request.stream:
            raise bad_request("Streaming partial images is not supported; leave stream false.", "stream")
        if request.response_format == "url" and self.storage is None:
            raise bad_request("This server cannot store images; use response_format 'b64_json'.", "response_format")
        if request.sampler_name and request.sampler_name not in SAMPLERS:
            raise bad_request(f"Unknown sampler '{request.sampler_name}'.", "sampler_name")

    def _job(self, request: ImageRequestFields, size: tuple[int, int], **image_inputs: Any) -> ImageGeneration:
        seed = request.seed
        return ImageGeneration(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt or "",
            width=size[0],
            height=size[1],
            steps=request.steps,
            guidance_scale=request.guidance_scale,
            seed=secrets.randbelow(SEED_LIMIT) if seed is None or seed < 0 else seed,
            image_num=request.n,
            sampler=request.sampler_name or None,
            **image_inputs,
        )

    async def generate(self, request: ImageGenerationRequest, base_url: str) -> ImagesResponse:
        self._check(request)
        size = parse_size(request.size, DEFAULT_SIZE)
        return await self._run(request, self._job(request, size), base_url)

    async def edit(self, request: ImageEditRequest, base_url: str) -> ImagesResponse:
        self._check(request)
        if int(request.steps * request.strength) < 1:
            raise bad_request("steps * strength must leave at least one denoising step.", "strength")
        size, mask = await asyncio.to_thread(self._edit_inputs, request)
        job = self._job(request, size, init_image=request.image, mask_image=mask, strength=request.strength)
        return await self._run(request, job, base_url)

    @staticmethod
    def _edit_inputs(request: ImageEditRequest) -> tuple[tuple[int, int], bytes | None]:
        """Output size and engine mask, from the uploads (decoded here, then dropped: the
        engine decodes the bytes again at the job's size). Blocking: run in a thread."""
        image = open_input_image(request.image, "image")
        size = parse_size(request.size, fit_size(*image.size))
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

    async def _run(self, request: ImageRequestFields, job: ImageGeneration, base_url: str) -> ImagesResponse:
        attributes = image_attributes(job.width, job.height, job.image_num, job.steps, job.seed)
        call = inference("image_generation", request.model, attributes=attributes)
        async with call, self.scheduler.lease(request.model) as engine:
            result = await cast(ImageEngine, engine).generate(job)
            call.produced(images=len(result.images))
        output_format = request.output_format
        encoded = await asyncio.to_thread(lambda: [encode_image(image, output_format) for image in result.images])
        if request.response_format == "b64_json":
            data = [ImageData(b64_json=base64.b64encode(item).decode("ascii")) for item in encoded]
        else:
            data = [ImageData(url=url) for url in await self._store(encoded, output_format, base_url)]
        return ImagesResponse(created=unix_now(), data=data, output_format=output_format)

    async def _store(self, encoded: list[bytes], extension: str, base_url: str) -> list[str]:
        storage = cast(LocalStorage, self.storage)  # _check refused url output without storage
        folder = uuid.uuid4().hex  # a fresh folder per request, a valid key segment
        urls = []
        for index, item in enumerate(encoded):
            key = f"{folder}/{index}.{extension}"
            await asyncio.to_thread(storage.put, key, item)
            urls.append(base_url.rstrip("/") + storage.signed_path(key, self.url_ttl_s))
        return urls
