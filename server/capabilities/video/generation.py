"""Video generation: text-to-video (AnimateDiff and other diffusers pipelines) and
image-to-video (Stable Video Diffusion) on the video engines.

One home for what the API families share: the video model for a mode, the rules that depend on
the model (its LoRAs and embeddings, the frame budget, the size an input image gives), the
engine call, the encoding (MP4, WebM or GIF) and the task's output. The /v3 tasks and OpenAI's
video jobs (which are /v3 tasks) build a `VideoGeneration` job from their fields and name those
fields back through their `WireNames` when something is refused.
"""

from __future__ import annotations

from collections.abc import Callable

from engines.admission import Priority
from engines.base import ModelKind, ProgressCallback, VideoEngine, VideoGeneration, VideoMode
from engines.scheduler import Scheduler
from engines.video.animated import ANIMATES
from engines.video.encoding import VideoType, encode_video, interpolate_frames
from engines.workpools import WorkPool, run_in
from schemas.errors import ErrorCode
from schemas.limits import MAX_TXT2VIDEO_FRAMES, MAX_VIDEO_SIDE, MIN_VIDEO_SIDE, SIDE_MULTIPLE
from server.capabilities.addons import check_addons
from server.capabilities.calls import SAME_NAMES, WireNames, catalog_engine, engine_call
from server.capabilities.images.inputs import open_input_image
from server.capabilities.output_limits import DEFAULT_OUTPUT_LIMIT, OutputLimit
from server.storage.local import LocalStorage
from server.tasks.models import OutputFile
from server.tasks.runner import TaskOutcome

OPERATION = "video_generation"
# How an input image becomes the video's size: cropped to the model's aspect ratio and resized
# to its native size, or kept (both names mean that), rounded down to multiples of 8.
RESIZE_MODES = ("CROP_TO_ASPECT_RATIO", "ORIGINAL_DIMENSION", "ORIGINAL_RESOLUTION")
# Denoising is most of a job; decoding the latents and encoding the file take the rest.
_STEPS_SHARE = 0.9


class VideoGenerator:
    def __init__(
        self, scheduler: Scheduler, storage: LocalStorage, *, output_limit: OutputLimit = DEFAULT_OUTPUT_LIMIT
    ) -> None:
        self.scheduler = scheduler
        self.storage = storage
        self.output_limit = output_limit

    def engine(self, model: str, mode: VideoMode, names: WireNames = SAME_NAMES) -> VideoEngine:
        """The catalog's video model if it makes ``mode`` videos (404 for an unknown name, 400 for
        another kind or mode), neither loaded nor leased: its mode, frame rate and native size
        come from the catalog."""
        engine = catalog_engine(self.scheduler, self.video_model(model), VideoEngine, names)
        if engine.mode != mode:
            raise names.invalid("model", f"The model '{model}' makes {engine.mode} videos, not {mode}.")
        return engine

    def video_model(self, model: str) -> str:
        """The video model a name stands for: an SD 1.x image model's AnimateDiff twin
        (engines/video/animated.py), else the name itself."""
        for listed in self.scheduler.registry:
            if listed.spec.options.get(ANIMATES) == model and listed.spec.kind is ModelKind.VIDEO:
                return listed.spec.name
        return model

    def default_model(self, mode: VideoMode) -> str | None:
        """The first catalog model that makes ``mode`` videos."""
        for listed in self.scheduler.registry:
            name = listed.spec.name
            if listed.spec.kind is ModelKind.VIDEO and self.scheduler.engine(name, VideoEngine).mode == mode:
                return name
        return None

    # -- the rules that depend on the model ----------------------------------------------------

    def check(
        self, engine: VideoEngine, job: VideoGeneration, names: WireNames = SAME_NAMES, *, interpolate: bool = False
    ) -> None:
        """Refuse what ``engine`` cannot run; the wire schemas have checked every fixed range.
        ``interpolate``: a blended frame goes between each pair (2n - 1 frames)."""
        total = sum(segment.frames for segment in job.prompts)
        if total > MAX_TXT2VIDEO_FRAMES:
            message = f"The prompt segments hold {total} frames; at most {MAX_TXT2VIDEO_FRAMES} in all."
            raise names.invalid("prompts", message)
        frames = job.frame_count
        if interpolate:
            frames = 2 * frames - 1
        count_field = "prompts" if job.prompts else "num_frames"
        self.output_limit.check(
            job.width, job.height, frames, names, size_field="width", count_field=count_field, unit="frame"
        )
        check_addons(engine.spec, job.loras, job.embeddings, names)

    @staticmethod
    def check_resize_mode(resize_mode: str, names: WireNames = SAME_NAMES) -> None:
        if resize_mode not in RESIZE_MODES:
            field = names("resize_mode")
            message = f"Unknown {field} '{resize_mode}'; known: {', '.join(RESIZE_MODES)}."
            raise names.invalid("resize_mode", message)

    @staticmethod
    def image_size(
        image: bytes,
        resize_mode: str,
        native: tuple[int, int],
        names: WireNames = SAME_NAMES,
        *,
        multiple: int = SIDE_MULTIPLE,
    ) -> tuple[int, int]:
        """The size of a video made from ``image``; checks the image on the way. Blocking.
        ``multiple``: the model family's side multiple (8, Wan 16, LTX-Video 32)."""
        with open_input_image(image, names("image")) as opened:
            width, height = opened.size
        if resize_mode == "CROP_TO_ASPECT_RATIO":
            return native
        size = (width // multiple * multiple, height // multiple * multiple)
        if not all(MIN_VIDEO_SIDE <= side <= MAX_VIDEO_SIDE for side in size):
            message = (
                f"The image is {width}x{height}; with {resize_mode} each side must be between {MIN_VIDEO_SIDE} and "
                f"{MAX_VIDEO_SIDE}. Use CROP_TO_ASPECT_RATIO to resize it to the model's size."
            )
            raise names.invalid("image", message, ErrorCode.INVALID_IMAGE_SIZE)
        return size

    # -- running -------------------------------------------------------------------------------

    async def run_task(
        self,
        task_id: str,
        model: str,
        job: VideoGeneration,
        progress: ProgressCallback,
        *,
        fps: int,
        video_type: VideoType,
        interpolate: bool = False,
        owner: str | None = None,
    ) -> TaskOutcome:
        """The video of ``job`` at ``fps`` frames a second, stored as ``<task_id>/0.<video_type>``;
        with ``interpolate``, a blended frame between each pair at twice the rate."""
        attributes = {
            "omniserve.video.width": job.width,
            "omniserve.video.height": job.height,
            "omniserve.video.fps": fps,
        }
        call = engine_call(
            self.scheduler,
            model,
            VideoEngine,
            OPERATION,
            priority=Priority.BACKGROUND,
            owner=owner,
            attributes=attributes,
        )
        async with call as (engine, record):
            result = await engine.generate(job, _scaled(progress, _STEPS_SHARE))
            record.produced(video_frames=len(result.frames))
        frames = result.frames
        if interpolate:
            frames = await run_in(WorkPool.MEDIA, interpolate_frames, frames)
            fps *= 2  # twice the frames in the same time
        data = await run_in(WorkPool.MEDIA, encode_video, frames, fps, video_type)
        key = f"{task_id}/0.{video_type}"
        await run_in(WorkPool.STORAGE, self.storage.put, key, data)
        return TaskOutcome(outputs=[OutputFile(kind="video", key=key, media_type=video_type)], seed=result.seed)


def _scaled(progress: ProgressCallback, share: float) -> Callable[[float], None]:
    return lambda fraction: progress(share * fraction)
