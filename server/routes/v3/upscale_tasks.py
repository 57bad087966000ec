"""The /v3 adapter of upscaling: Novita's upscale body onto an `Upscaler` job (seed 003)."""

from __future__ import annotations

from engines.base import UpscaleJob
from engines.workpools import WorkPool, run_in
from schemas.v3.upscale import UpscaleBody
from server.capabilities.calls import WireNames
from server.capabilities.images.inputs import base64_image_bytes
from server.capabilities.upscale import Upscaler
from server.routes.v3.image_tasks import image_outputs
from server.tasks.models import Task, TaskType
from server.tasks.runner import ProgressReporter, TaskOutcome, TaskRunner
from server.tasks.submission import TaskSubmission
from server.validation import decode_task_body

V3_UPSCALE_NAMES = WireNames(
    {"model": "request.model_name", "image": "request.image_base64", "scale": "request.scale_factor"},
    prefix="request.",
)


def upscale_job(body: UpscaleBody) -> UpscaleJob:
    image = base64_image_bytes(body.request.image_base64, V3_UPSCALE_NAMES("image"))
    return UpscaleJob(image=image, scale=body.request.scale_factor)


class V3UpscaleTasks:
    def __init__(self, upscaler: Upscaler, submission: TaskSubmission, runner: TaskRunner) -> None:
        self.upscaler = upscaler
        self.submission = submission
        runner.register(TaskType.UPSCALE, self.execute)

    async def submit(self, raw: bytes, body: UpscaleBody, owner: str | None) -> str:
        """Queue ``body``, decoded from ``raw`` by its schema (which checked scale_factor's range)."""
        engine = self.upscaler.engine(body.request.model_name, V3_UPSCALE_NAMES)
        await self.submission.check_extra(body.extra)
        # Decoding the input costs milliseconds per megapixel: off the event loop.
        job = await run_in(WorkPool.MEDIA, upscale_job, body)
        await run_in(WorkPool.MEDIA, self.upscaler.check, job, V3_UPSCALE_NAMES)
        task = await self.submission.submit(TaskType.UPSCALE, engine.spec.name, raw, body.extra, owner)
        return task.task_id

    async def execute(self, task: Task, progress: ProgressReporter) -> TaskOutcome:
        body = decode_task_body(task.request, UpscaleBody)
        job = await run_in(WorkPool.MEDIA, upscale_job, body)
        return await self.upscaler.run_task(
            task.task_id, task.model, job, progress, image_outputs(body.extra), owner=task.owner_key_id
        )
