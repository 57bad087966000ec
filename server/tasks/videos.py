"""/v3 video tasks (txt2video, img2video): validate and submit, then generate on a video engine,
encode (MP4, WebM or GIF) and store the file."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import cast

from engines.admission import Priority
from engines.base import LoraWeight, ModelKind, VideoEngine, VideoGeneration, VideoMode, VideoPrompt
from engines.scheduler import Scheduler
from engines.video.encoding import encode_video, interpolate_frames
from schemas.errors import ApiError, ErrorCode
from schemas.limits import MAX_TXT2VIDEO_FRAMES, MAX_VIDEO_SIDE, MIN_VIDEO_SIDE, SEED_LIMIT
from schemas.v3.videos import Img2VideoBody, Txt2VideoBody, VideoExtra
from server.capabilities.images.inputs import base64_image_bytes, open_input_image
from server.storage.local import LocalStorage
from server.tasks.bodies import decode_task_body
from server.tasks.images import ImageTasks, enqueue
from server.tasks.models import OutputFile, Task, TaskType
from server.tasks.runner import ProgressReporter, TaskOutcome, TaskRunner
from server.telemetry.genai import inference

RESIZE_MODES = ("CROP_TO_ASPECT_RATIO", "ORIGINAL_DIMENSION", "ORIGINAL_RESOLUTION")
# Denoising is most of a job; decoding the latents and encoding the file take the rest.
_STEPS_SHARE = 0.9
IMAGE_PARAM = "image_file"


def _invalid(message: str, param: str, code: ErrorCode = ErrorCode.INVALID_REQUEST_BODY) -> ApiError:
    return ApiError(code, message, param=param)


def _seed(requested: int | None) -> int:
    return secrets.randbelow(SEED_LIMIT) if requested is None or requested < 0 else requested


def image_video_size(image: bytes, resize_mode: str, native: tuple[int, int]) -> tuple[int, int]:
    """The output size of an img2video job; checks the image on the way. Blocking."""
    with open_input_image(image, IMAGE_PARAM) as opened:
        width, height = opened.size
    if resize_mode == "CROP_TO_ASPECT_RATIO":
        return native
    size = (width // 8 * 8, height // 8 * 8)
    if not all(MIN_VIDEO_SIDE <= side <= MAX_VIDEO_SIDE for side in size):
        message = (
            f"The image is {width}x{height}; with {resize_mode} each side must be between {MIN_VIDEO_SIDE} and "
            f"{MAX_VIDEO_SIDE}. Use CROP_TO_ASPECT_RATIO to resize it to the model's size."
        )
        raise _invalid(message, IMAGE_PARAM, ErrorCode.INVALID_IMAGE_SIZE)
    return size


class VideoTasks:
    def __init__(
        self, scheduler: Scheduler, runner: TaskRunner, storage: LocalStorage, *, image_tasks: ImageTasks
    ) -> None:
        self.scheduler = scheduler
        self.runner = runner
        self.storage = storage
        # The `extra` object is common to every /v3 task: one place checks it.
        self.image_tasks = image_tasks
        runner.register(TaskType.TXT_TO_VIDEO, self.execute)
        runner.register(TaskType.IMG_TO_VIDEO, self.execute)

    def video_engine(self, name: str, mode: VideoMode, param: str = "model_name") -> VideoEngine:
        """The catalog's video model `name` if it makes `mode` videos; 404 or 400 otherwise."""
        engine = self.scheduler.engine(name)
        if engine.spec.kind is not ModelKind.VIDEO:
            raise _invalid(f"The model '{name}' is not a video model.", param)
        video = cast(VideoEngine, engine)
        if video.mode != mode:
            raise _invalid(f"The model '{name}' makes {video.mode} videos, not {mode}.", param)
        return video

    def default_model(self, mode: VideoMode) -> str | None:
        """The first catalog model that makes `mode` videos."""
        for engine in self.scheduler.registry:
            if engine.spec.kind is ModelKind.VIDEO and cast(VideoEngine, engine).mode == mode:
                return engine.spec.name
        return None

    async def _check_extra(self, extra: VideoExtra) -> None:
        await self.image_tasks._check_extra(extra)
        if extra.enable_nsfw_detection:
            raise _invalid("NSFW detection is not available for video tasks.", "extra.enable_nsfw_detection")

    async def submit_txt2video(self, raw: bytes, body: Txt2VideoBody, owner: str | None) -> Task:
        """Queue ``body``, decoded from ``raw`` by its schema (which checked every fixed range)."""
        engine = self.video_engine(body.model_name, "text-to-video")
        total = sum(segment.frames for segment in body.prompts)
        if total > MAX_TXT2VIDEO_FRAMES:
            message = f"The prompt segments hold {total} frames; at most {MAX_TXT2VIDEO_FRAMES} in all."
            raise _invalid(message, "prompts")
        options = engine.spec.options
        for lora in body.loras or []:
            if lora.model_name not in options.get("loras", {}):
                raise _invalid(f"Unknown LoRA '{lora.model_name}'.", "loras")
        for embedding in body.embeddings or []:
            if embedding.model_name not in options.get("embeddings", {}):
                raise _invalid(f"Unknown embedding '{embedding.model_name}'.", "embeddings")
        seed = _seed(body.seed)
        await self._check_extra(body.extra)
        return await self._enqueue(TaskType.TXT_TO_VIDEO, engine, raw, body.extra, owner, seed)

    async def submit_img2video(self, raw: bytes, body: Img2VideoBody, owner: str | None) -> Task:
        """Queue ``body``, decoded from ``raw`` by its schema (which checked every fixed range)."""
        engine = self.video_engine(body.model_name, "image-to-video")
        if body.image_file_resize_mode not in RESIZE_MODES:
            message = (
                f"Unknown image_file_resize_mode '{body.image_file_resize_mode}'; known: {', '.join(RESIZE_MODES)}."
            )
            raise _invalid(message, "image_file_resize_mode")
        seed = _seed(body.seed)
        await self._check_extra(body.extra)
        # Decoding the image costs milliseconds per megapixel: off the event loop.
        await asyncio.to_thread(self._img2video_size, body, engine)
        return await self._enqueue(TaskType.IMG_TO_VIDEO, engine, raw, body.extra, owner, seed)

    @staticmethod
    def _img2video_size(body: Img2VideoBody, engine: VideoEngine) -> tuple[int, int]:
        image = base64_image_bytes(body.image_file, IMAGE_PARAM)
        return image_video_size(image, body.image_file_resize_mode, engine.native_size)

    async def _enqueue(
        self, task_type: TaskType, engine: VideoEngine, raw: bytes, extra: VideoExtra, owner: str | None, seed: int
    ) -> Task:
        task = Task(
            task_type=task_type,
            model=engine.spec.name,
            request=raw,
            owner_key_id=owner,
            seed=seed,
            webhook_url=extra.webhook.url if extra.webhook else None,
        )
        await enqueue(self.runner, task, extra)
        return task

    async def execute(self, task: Task, progress: ProgressReporter) -> TaskOutcome:
        body: Txt2VideoBody | Img2VideoBody
        if task.task_type is TaskType.TXT_TO_VIDEO:
            body = decode_task_body(task.request, Txt2VideoBody)
        else:
            body = decode_task_body(task.request, Img2VideoBody)
        seed = task.seed or 0
        lease = self.scheduler.lease(task.model, priority=Priority.BACKGROUND, owner=task.owner_key_id)
        async with inference("video_generation", task.model) as call, lease as leased:
            engine = cast(VideoEngine, leased)
            job, fps = await asyncio.to_thread(self._job, body, engine, seed)
            result = await engine.generate(job, _scaled(progress, _STEPS_SHARE))
            call.set(
                {"omniserve.video.width": job.width, "omniserve.video.height": job.height, "omniserve.video.fps": fps}
            )
            call.produced(video_frames=len(result.frames))
        frames = result.frames
        if isinstance(body, Img2VideoBody) and body.enable_frame_interpolation:
            frames = await asyncio.to_thread(interpolate_frames, frames)
            fps *= 2  # twice the frames in the same time
        video_type = body.extra.response_video_type
        data = await asyncio.to_thread(encode_video, frames, fps, video_type)
        key = f"{task.task_id}/0.{video_type}"
        await asyncio.to_thread(self.storage.put, key, data)
        return TaskOutcome(outputs=[OutputFile(kind="video", key=key, media_type=video_type)], seed=result.seed)

    @staticmethod
    def _job(body: Txt2VideoBody | Img2VideoBody, engine: VideoEngine, seed: int) -> tuple[VideoGeneration, int]:
        """The engine job and the output frame rate. Blocking (decodes the input image)."""
        if isinstance(body, Txt2VideoBody):
            job = VideoGeneration(
                width=body.width,
                height=body.height,
                steps=body.steps,
                seed=seed,
                prompts=[VideoPrompt(prompt=s.prompt, frames=s.frames) for s in body.prompts],
                negative_prompt=body.negative_prompt or "",
                guidance_scale=body.guidance_scale,
                clip_skip=body.clip_skip or None,
                loras=[LoraWeight(name=lora.model_name, strength=lora.strength) for lora in body.loras or []],
                embeddings=[embedding.model_name for embedding in body.embeddings or []],
                closed_loop=body.closed_loop,
            )
            return job, engine.fps
        image = base64_image_bytes(body.image_file, IMAGE_PARAM)
        width, height = image_video_size(image, body.image_file_resize_mode, engine.native_size)
        job = VideoGeneration(
            width=width,
            height=height,
            steps=body.steps,
            seed=seed,
            image=image,
            num_frames=body.frames_num,
            fps=body.frames_per_second,
            motion_bucket_id=body.motion_bucket_id,
            noise_aug_strength=body.cond_aug,
        )
        return job, body.frames_per_second


def _scaled(progress: ProgressReporter, share: float) -> Callable[[float], None]:
    return lambda fraction: progress(share * fraction)
