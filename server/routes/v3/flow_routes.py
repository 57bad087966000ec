"""Novita's fixed-model routes of the flow families.

- POST /v3beta/flux-1-schnell: synchronous text-to-image, answered with signed image URLs.
- POST /v3/async/qwen-image-txt2img: a text-to-image task (its result from /v3/async/task-result).

Which catalog model serves a route: the entry whose name or alias is the route's model id,
``flux-1-schnell`` and ``qwen-image`` (the demo catalog aliases demo-flux and demo-qwen-image so).
Without one the route answers 404 naming the id. Both jobs run through the same rules as
/v3/async/txt2img: the family's defaults and refusals, the pixel limits, the scheduler's turns.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Controller, Request, post

from engines.base import ImageGeneration
from schemas.errors import ApiError, ErrorCode
from schemas.v3.common import TaskSubmitted
from schemas.v3.flow import FlowTask, FluxSchnellRequest, FluxSchnellResponse, QwenImageRequest
from schemas.v3.images import Txt2ImgBody
from schemas.v3.tasks import TaskImage
from server.accounts import Meter
from server.accounts_hooks import Caller
from server.capabilities.calls import WireNames
from server.capabilities.images.defaults import image_defaults
from server.capabilities.images.encoding import store_task_images
from server.capabilities.images.generation import ImageGenerator
from server.hosts import output_base_url
from server.routes.v3.image_tasks import V3ImageTasks
from server.storage.local import LocalStorage
from server.tasks.models import TaskType, new_task_id
from server.validation import NovitaBody, convert, refuse_empty_body

FLUX_SCHNELL_MODEL = "flux-1-schnell"
QWEN_IMAGE_MODEL = "qwen-image"
QWEN_MIN_SIDE, QWEN_MAX_SIDE = 256, 1536
_SIZE = re.compile(r"(\d{1,5})\*(\d{1,5})")
# The fixed model is the route's, not a field: a missing one is named "model".
FLUX_NAMES = WireNames({"model": "model"})


def qwen_size(size: str) -> tuple[int, int]:
    """Width and height of a Qwen-Image ``size`` ("1024*1024"), each side in Novita's range."""
    match = _SIZE.fullmatch(size.strip())
    if match is None:
        raise ApiError(ErrorCode.INVALID_IMAGE_SIZE, f"size must be 'WIDTH*HEIGHT', not {size!r}.", param="size")
    width, height = int(match.group(1)), int(match.group(2))
    if not all(QWEN_MIN_SIDE <= side <= QWEN_MAX_SIDE for side in (width, height)):
        message = f"Each side of size must be between {QWEN_MIN_SIDE} and {QWEN_MAX_SIDE}; got {size}."
        raise ApiError(ErrorCode.INVALID_IMAGE_SIZE, message, param="size")
    return width, height


class FlowRoutes:
    def __init__(self, images: ImageGenerator, v3_images: V3ImageTasks, storage: LocalStorage, *, url_ttl_s: int):
        self.images = images
        self.v3_images = v3_images
        self.storage = storage
        self.url_ttl_s = url_ttl_s

    async def flux_schnell(self, request: FluxSchnellRequest, meter: Meter, base_url: str) -> FluxSchnellResponse:
        engine = self.images.engine(FLUX_SCHNELL_MODEL, FLUX_NAMES)
        defaults = image_defaults(engine)
        job = ImageGeneration(
            prompt=request.prompt,
            width=request.width,
            height=request.height,
            steps=request.steps,
            guidance_scale=defaults.guidance_scale or 0.0,
            seed=request.seed,
            image_num=request.image_num,
        )
        self.images.check(engine, job, FLUX_NAMES)
        image_type = request.response_image_type or request.response_image_format or "png"
        task_id = new_task_id()
        async with meter.images(job.image_num) as charge:
            result = await self.images.generate(FLUX_SCHNELL_MODEL, job, FLUX_NAMES)
            outputs = await store_task_images(
                self.storage, task_id, result.images, image_type, [None] * len(result.images)
            )
            charge.add(len(outputs))
        ttl = str(self.url_ttl_s)
        images = [
            TaskImage(
                image_url=base_url.rstrip("/") + self.storage.signed_path(output.key, self.url_ttl_s),
                image_url_ttl=ttl,
                image_type=output.media_type,
            )
            for output in outputs
        ]
        return FluxSchnellResponse(task=FlowTask(task_id=task_id), images=images)

    async def qwen_image(self, request: QwenImageRequest, owner: str | None) -> str:
        """A /v3 txt2img task on the Qwen-Image model, stored as that body (its task type TXT_TO_IMG)."""
        self.images.engine(QWEN_IMAGE_MODEL, FLUX_NAMES)  # 404 naming the route's model id
        width, height = qwen_size(request.size)
        fields: dict[str, Any] = {
            "model_name": QWEN_IMAGE_MODEL,
            "prompt": request.prompt,
            "width": width,
            "height": height,
        }
        body = convert({"request": fields}, Txt2ImgBody)  # the prompt's limits, as /v3/async/txt2img has them
        raw = msgspec.json.encode(body)
        return await self.v3_images.submit(TaskType.TXT_TO_IMG, raw, body, owner)


class FlowModelsController(Controller):
    path = "/"
    tags = ["v3: flow models"]
    dto = NovitaBody
    return_dto = None
    guards = [refuse_empty_body]

    @post(
        "/v3beta/flux-1-schnell", status_code=200, summary="FLUX.1 [schnell] text to image", operation_id="flux1Schnell"
    )
    async def flux_schnell(
        self, request: Request, data: FluxSchnellRequest, flow_routes: FlowRoutes, caller: Caller
    ) -> FluxSchnellResponse:
        return await flow_routes.flux_schnell(data, caller.meter, output_base_url(request))

    @post(
        "/v3/async/qwen-image-txt2img",
        status_code=200,
        summary="Qwen-Image text to image",
        operation_id="qwenImageTxt2img",
    )
    async def qwen_image(self, data: QwenImageRequest, flow_routes: FlowRoutes, caller: Caller) -> TaskSubmitted:
        return TaskSubmitted(task_id=await flow_routes.qwen_image(data, caller.key_id))
