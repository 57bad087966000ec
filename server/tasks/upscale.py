"""/v3 upscale tasks: validate and submit, then execute on an upscaler engine (seed 003)."""

from __future__ import annotations

import asyncio
from typing import cast

from engines.admission import Priority
from engines.base import ModelKind, UpscaleEngine, UpscaleJob, upscaled_size
from engines.scheduler import Scheduler
from schemas.errors import ApiError, ErrorCode
from schemas.v3.upscale import UpscaleBody, UpscaleRequest
from server.capabilities.images.encoding import encode_image
from server.capabilities.images.inputs import base64_image_bytes, open_input_image
from server.storage.local import LocalStorage
from server.tasks.bodies import decode_task_body
from server.tasks.images import ImageTasks, enqueue
from server.tasks.models import OutputFile, Task, TaskType
from server.tasks.runner import ProgressReporter, TaskOutcome, TaskRunner
from server.telemetry.genai import inference

MAX_INPUT_SIDE = 2048  # the seed's limit for the input image
# Bounds the encoded output and the memory of the final resize; 4096x4096 is 48 MiB as RGB.
MAX_OUTPUT_PIXELS = 4096 * 4096
IMAGE_PARAM = "request.image_base64"


def _invalid(message: str, param: str, code: ErrorCode = ErrorCode.INVALID_REQUEST_BODY) -> ApiError:
    return ApiError(code, message, param=param)


def _check_image(request: UpscaleRequest) -> None:
    """The input decodes within the limits and its output stays under MAX_OUTPUT_PIXELS. Blocking."""
    with open_input_image(base64_image_bytes(request.image_base64, IMAGE_PARAM), IMAGE_PARAM) as image:
        width, height = image.size
    if width > MAX_INPUT_SIDE or height > MAX_INPUT_SIDE:
        message = f"The image is {width}x{height}; at most {MAX_INPUT_SIDE}x{MAX_INPUT_SIDE} is accepted."
        raise _invalid(message, IMAGE_PARAM, ErrorCode.IMAGE_EXCEEDS_MAX_RESOLUTION)
    out_width, out_height = upscaled_size(width, height, request.scale_factor)
    if out_width * out_height > MAX_OUTPUT_PIXELS:
        message = (
            f"Upscaling {width}x{height} by {request.scale_factor:g} gives {out_width}x{out_height}, "
            f"over the limit of {MAX_OUTPUT_PIXELS} pixels; use a smaller scale_factor."
        )
        raise _invalid(message, "request.scale_factor", ErrorCode.IMAGE_EXCEEDS_MAX_RESOLUTION)


class UpscaleTasks:
    def __init__(
        self, scheduler: Scheduler, runner: TaskRunner, storage: LocalStorage, *, image_tasks: ImageTasks
    ) -> None:
        self.scheduler = scheduler
        self.runner = runner
        self.storage = storage
        # The `extra` object is common to every /v3 image task: one place checks it.
        self.image_tasks = image_tasks
        runner.register(TaskType.UPSCALE, self.execute)

    async def submit(self, raw: bytes, body: UpscaleBody, owner: str | None) -> str:
        """Queue ``body``, decoded from ``raw`` by its schema (which checked scale_factor's range)."""
        request = body.request
        engine = self.scheduler.engine(request.model_name)
        if engine.spec.kind is not ModelKind.UPSCALER:
            raise _invalid(f"The model '{request.model_name}' is not an upscaler.", "request.model_name")
        await self.image_tasks._check_extra(body.extra)
        # Decoding the input costs milliseconds per megapixel: off the event loop.
        await asyncio.to_thread(_check_image, request)
        task = Task(
            task_type=TaskType.UPSCALE,
            model=engine.spec.name,
            request=raw,
            owner_key_id=owner,
            webhook_url=body.extra.webhook.url if body.extra.webhook else None,
        )
        await enqueue(self.runner, task, body.extra)
        return task.task_id

    async def execute(self, task: Task, progress: ProgressReporter) -> TaskOutcome:
        body = decode_task_body(task.request, UpscaleBody)
        image = await asyncio.to_thread(base64_image_bytes, body.request.image_base64, IMAGE_PARAM)
        job = UpscaleJob(image=image, scale=body.request.scale_factor)
        lease = self.scheduler.lease(task.model, priority=Priority.BACKGROUND, owner=task.owner_key_id)
        async with inference("image_upscale", task.model) as call, lease as leased:
            upscaled = await cast(UpscaleEngine, leased).upscale(job, progress)
            call.set({"omniserve.image.width": upscaled.width, "omniserve.image.height": upscaled.height})
            call.produced(images=1)
        # The classifier judges what the client receives: the upscaled image.
        [nsfw] = await self.image_tasks.nsfw_results([upscaled], body.extra)
        image_type = body.extra.response_image_type
        data = await asyncio.to_thread(encode_image, upscaled, image_type)
        key = f"{task.task_id}/0.{image_type}"
        await asyncio.to_thread(self.storage.put, key, data)
        return TaskOutcome(outputs=[OutputFile(kind="image", key=key, media_type=image_type, nsfw=nsfw)])
