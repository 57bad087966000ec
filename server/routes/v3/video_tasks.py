"""The /v3 adapter of video generation: Novita's flat txt2video and img2video bodies onto
`VideoGenerator` jobs, submitted as tasks and executed from the stored body. OpenAI's video jobs
(server/routes/openai/video_jobs.py) are submitted through here too, as the Novita bodies they
store, with their own field names for what is refused."""

from __future__ import annotations

import secrets

from engines.base import Engine, LoraWeight, VideoEngine, VideoGeneration, VideoMode, VideoPrompt
from engines.errors import InvalidJob
from engines.scheduler import Scheduler
from engines.video.families import check_job, model_defaults
from engines.workpools import WorkPool, run_in
from schemas.limits import SEED_LIMIT
from schemas.v3.videos import Img2VideoBody, Txt2VideoBody
from server.capabilities.calls import WireNames, catalog_engine
from server.capabilities.images.inputs import base64_image_bytes
from server.capabilities.video.generation import VideoGenerator
from server.errors import bad_request
from server.tasks.models import Task, TaskType
from server.tasks.runner import ProgressReporter, TaskOutcome, TaskRunner
from server.tasks.submission import TaskSubmission
from server.validation import decode_task_body

VideoBody = Txt2VideoBody | Img2VideoBody
BODY_TYPES: dict[TaskType, type[Txt2VideoBody] | type[Img2VideoBody]] = {
    TaskType.TXT_TO_VIDEO: Txt2VideoBody,
    TaskType.IMG_TO_VIDEO: Img2VideoBody,
}
MODES: dict[TaskType, VideoMode] = {TaskType.TXT_TO_VIDEO: "text-to-video", TaskType.IMG_TO_VIDEO: "image-to-video"}

# The job's fields as Novita names them (its video bodies are flat); the rest keep their names.
V3_VIDEO_NAMES = WireNames(
    {
        "model": "model_name",
        "image": "image_file",
        "num_frames": "frames_num",
        "fps": "frames_per_second",
        "noise_aug_strength": "cond_aug",
        "resize_mode": "image_file_resize_mode",
        "image_prompt": "prompt",
    }
)


def _seed(requested: int | None) -> int:
    return secrets.randbelow(SEED_LIMIT) if requested is None or requested < 0 else requested


def video_job(body: VideoBody, engine: VideoEngine, seed: int, names: WireNames = V3_VIDEO_NAMES) -> VideoGeneration:
    """The engine job a /v3 body asks for, with the model's defaults for what it leaves out,
    checked against the model family's rules. Blocking: an img2video body's image is decoded
    and the model's folder read for its pipeline class."""
    defaults = model_defaults(engine.spec)
    job = _job(body, engine, seed, names)
    try:
        check_job(defaults.family, engine.spec.name, job, text_to_video=isinstance(body, Txt2VideoBody))
    except InvalidJob as refused:
        raise names.invalid(refused.field or "model", refused.message) from None
    return job


def _job(body: VideoBody, engine: VideoEngine, seed: int, names: WireNames) -> VideoGeneration:
    defaults = model_defaults(engine.spec)
    if isinstance(body, Txt2VideoBody):
        return VideoGeneration(
            width=body.width,
            height=body.height,
            steps=defaults.steps if body.steps is None else body.steps,
            seed=seed,
            prompts=[VideoPrompt(prompt=segment.prompt, frames=segment.frames) for segment in body.prompts],
            negative_prompt=body.negative_prompt or "",
            guidance_scale=defaults.guidance_scale if body.guidance_scale is None else body.guidance_scale,
            clip_skip=body.clip_skip or None,
            loras=[LoraWeight(name=lora.model_name, strength=lora.strength) for lora in body.loras or []],
            embeddings=[embedding.model_name for embedding in body.embeddings or []],
            closed_loop=body.closed_loop,
            fps=defaults.fps,
            flow_shift=body.flow_shift,
        )
    image = base64_image_bytes(body.image_file, names("image"))
    multiple = defaults.family.side_multiple
    size = VideoGenerator.image_size(image, body.image_file_resize_mode, engine.native_size, names, multiple=multiple)
    # Guidance is a default only where the family reads text with the image (not SVD).
    guidance = defaults.guidance_scale if defaults.family.text_prompt_with_image else None
    return VideoGeneration(
        width=size[0],
        height=size[1],
        steps=defaults.steps if body.steps is None else body.steps,
        seed=seed,
        image=image,
        num_frames=defaults.frames if body.frames_num is None else body.frames_num,
        image_prompt=body.prompt or "",
        negative_prompt=body.negative_prompt or "",
        guidance_scale=guidance if body.guidance_scale is None else body.guidance_scale,
        fps=defaults.fps if body.frames_per_second is None else body.frames_per_second,
        motion_bucket_id=body.motion_bucket_id,
        noise_aug_strength=body.cond_aug,
        flow_shift=body.flow_shift,
    )


class V3VideoTasks:
    def __init__(
        self, videos: VideoGenerator, submission: TaskSubmission, runner: TaskRunner, scheduler: Scheduler
    ) -> None:
        self.videos = videos
        self.submission = submission
        self.scheduler = scheduler
        for task_type in BODY_TYPES:
            runner.register(task_type, self.execute)

    def engine(self, name: str, mode: VideoMode, names: WireNames = V3_VIDEO_NAMES) -> VideoEngine:
        # A name the catalog does not know is refused naming "model", the scheduler's word, as
        # /v3 video tasks always have; a known model of another kind or mode names the field.
        catalog_engine(self.scheduler, name, Engine)
        return self.videos.engine(name, mode, names)

    async def submit(
        self, task_type: TaskType, raw: bytes, body: VideoBody, owner: str | None, names: WireNames = V3_VIDEO_NAMES
    ) -> Task:
        """Queue ``body``, decoded from ``raw`` by its schema (which checked every fixed range),
        once what depends on the model and the server holds too."""
        engine = self.engine(body.model_name, MODES[task_type], names)
        if isinstance(body, Img2VideoBody):
            self.videos.check_resize_mode(body.image_file_resize_mode, names)
        seed = _seed(body.seed)
        # Decoding an input image costs milliseconds per megapixel: off the event loop.
        job = await run_in(WorkPool.MEDIA, video_job, body, engine, seed, names)
        interpolate = isinstance(body, Img2VideoBody) and body.enable_frame_interpolation
        self.videos.check(engine, job, names, interpolate=interpolate)
        await self.submission.check_extra(body.extra)
        if body.extra.enable_nsfw_detection:
            raise bad_request("NSFW detection is not available for video tasks.", "extra.enable_nsfw_detection")
        return await self.submission.submit(task_type, engine.spec.name, raw, body.extra, owner, seed=seed)

    async def execute(self, task: Task, progress: ProgressReporter) -> TaskOutcome:
        body = decode_task_body(task.request, BODY_TYPES[task.task_type])
        engine = self.videos.engine(task.model, MODES[task.task_type])
        job = await run_in(WorkPool.MEDIA, video_job, body, engine, task.seed or 0)
        image_body = body if isinstance(body, Img2VideoBody) else None
        return await self.videos.run_task(
            task.task_id,
            task.model,
            job,
            progress,
            # A text-to-video model plays at the rate it was made for; an animated image at the one asked.
            fps=job.fps,
            video_type=body.extra.response_video_type,
            interpolate=image_body is not None and image_body.enable_frame_interpolation,
            owner=task.owner_key_id,
        )
