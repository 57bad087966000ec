"""Upscaling: an input image enlarged by a factor on an upscaler engine (/v3 upscale).

The capability owns the input and output limits, the engine call and the task's output;
the /v3 adapter maps Novita's fields onto it (server/routes/v3/upscale_tasks.py).
"""

from __future__ import annotations

from typing import Any

from engines.admission import Priority
from engines.base import ProgressCallback, UpscaleEngine, UpscaleJob, upscaled_size
from engines.scheduler import Scheduler
from schemas.errors import ErrorCode
from server.capabilities.calls import SAME_NAMES, WireNames, catalog_engine, engine_call
from server.capabilities.images.encoding import ImageOutputs
from server.capabilities.images.generation import ImageGenerator
from server.capabilities.images.inputs import open_input_image
from server.tasks.runner import TaskOutcome

MAX_INPUT_SIDE = 2048  # the seed's limit for the input image


class Upscaler:
    def __init__(self, scheduler: Scheduler, images: ImageGenerator) -> None:
        self.scheduler = scheduler
        # Its outputs are delivered as generated images are: scored, encoded, stored.
        self.images = images

    def engine(self, model: str, names: WireNames = SAME_NAMES) -> UpscaleEngine:
        return catalog_engine(self.scheduler, model, UpscaleEngine, names)

    def check(self, job: UpscaleJob, names: WireNames = SAME_NAMES) -> None:
        """The input decodes within the limits and its output within the server's pixel limits
        (the final resize and the encoding hold it whole). Blocking."""
        with open_input_image(job.image, names("image")) as image:
            width, height = image.size
        if width > MAX_INPUT_SIDE or height > MAX_INPUT_SIDE:
            message = f"The image is {width}x{height}; at most {MAX_INPUT_SIDE}x{MAX_INPUT_SIDE} is accepted."
            raise names.invalid("image", message, ErrorCode.IMAGE_EXCEEDS_MAX_RESOLUTION)
        out_width, out_height = upscaled_size(width, height, job.scale)
        self.images.output_limit.check(out_width, out_height, 1, names, size_field="scale", count_field="scale")

    async def run_task(
        self,
        task_id: str,
        model: str,
        job: UpscaleJob,
        progress: ProgressCallback,
        outputs: ImageOutputs,
        owner: str | None = None,
    ) -> TaskOutcome:
        """The upscaled image, delivered as ``outputs`` asks."""
        if outputs.nsfw_detection:
            self.images.nsfw.require()
        call = engine_call(
            self.scheduler, model, UpscaleEngine, "image_upscale", priority=Priority.BACKGROUND, owner=owner
        )
        async with call as (engine, record):
            upscaled: Any = await engine.upscale(job, progress)
            record.set({"omniserve.image.width": upscaled.width, "omniserve.image.height": upscaled.height})
            record.produced(images=1)
        # The classifier judges what the client receives: the upscaled image.
        return TaskOutcome(outputs=await self.images.deliver(task_id, [upscaled], outputs))
