"""The OpenAI adapter of video generation: video jobs over the /v3 video tasks. A create becomes
a txt2video (or, with an input image, img2video) task whose stored body is the Novita body it
stands for, and a video's id is its task id, so either API can follow the job."""

from __future__ import annotations

import base64
import functools
import math
import re
from pathlib import Path
from typing import TypeVar

import msgspec

from engines.base import VideoEngine, VideoMode
from engines.video.families import ModelDefaults, model_defaults
from engines.workpools import WorkPool, run_in
from schemas.errors import ApiError, ErrorCode
from schemas.limits import MAX_VIDEO_SECONDS
from schemas.openai.videos import Video, VideoCreateRequest, VideoError, VideoStatus
from schemas.v3.videos import Img2VideoBody, Txt2VideoBody, VideoPromptSegment
from server.capabilities.calls import WireNames
from server.capabilities.images.inputs import open_input_image
from server.capabilities.video.generation import VideoGenerator
from server.errors import bad_request
from server.routes.v3.video_tasks import MODES, V3VideoTasks
from server.storage.local import LocalStorage
from server.tasks.models import Task, TaskStatus, TaskType
from server.tasks.store import TaskStore
from server.validation import decode_task_body

B = TypeVar("B", Txt2VideoBody, Img2VideoBody)

_STATUSES: dict[TaskStatus, VideoStatus] = {
    TaskStatus.QUEUED: "queued",
    TaskStatus.PROCESSING: "in_progress",
    TaskStatus.SUCCEED: "completed",
    TaskStatus.FAILED: "failed",
}
# The job's fields as OpenAI names them; the rest keep their names.
OPENAI_VIDEO_NAMES = WireNames(
    {
        "width": "size",
        "height": "size",
        "prompts": "prompt",
        "num_frames": "seconds",
        "fps": "seconds",
        "image": "input_reference",
    }
)
# The fields of the Novita body a create stores, as OpenAI names what they were made from: the
# body's schema checks their ranges.
_FROM_NOVITA = WireNames(
    {
        "model_name": "model",
        "width": "size",
        "height": "size",
        "prompts": "prompt",
        "frames_num": "seconds",
        "frames_per_second": "seconds",
        "image_file": "input_reference",
    }
)
# Patterns over ASCII digits: `\d` and str.isdigit take other scripts' digits, which int() may refuse.
_SECONDS = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,6})?")
_SIZE = re.compile(r"([0-9]{1,5})[xX]([0-9]{1,5})")


def _parse_seconds(value: str) -> float:
    """A plain decimal ("4", "2.5"): no exponent, no inf or nan, no non-ASCII digits, and at most
    MAX_VIDEO_SECONDS, so that seconds x fps is always a small whole number of frames."""
    seconds = float(value) if _SECONDS.fullmatch(value) else math.nan
    if not 0 < seconds <= MAX_VIDEO_SECONDS:
        message = f"seconds must be a positive number like '4' or '2.5', at most {MAX_VIDEO_SECONDS}; not {value!r}."
        raise bad_request(message, "seconds")
    return seconds


def _parse_size(value: str) -> tuple[int, int]:
    """ASCII digits only (str.isdigit also takes '²'); the task body's schema checks the range."""
    match = _SIZE.fullmatch(value)
    if match is None:
        raise bad_request(f"size must be WIDTHxHEIGHT, like 512x512, not {value!r}.", "size")
    return int(match.group(1)), int(match.group(2))


def _format_seconds(frames: int, fps: int) -> str:
    return f"{frames / fps:g}"


@functools.lru_cache(maxsize=256)
def _image_size(image_file: str, multiple: int) -> tuple[int, int]:
    """The size of an img2video task's video, from the header of its input image, in the model
    family's side multiple; cached because clients poll a job about once a second."""
    with open_input_image(base64.b64decode(image_file.split(",", 1)[-1]), "input_reference") as image:
        width, height = image.size
    return width // multiple * multiple, height // multiple * multiple


def stored_body(body: B, names: WireNames = _FROM_NOVITA) -> tuple[bytes, B]:
    """The body as a task stores it, and as its schema reads it back: the schema checks the ranges
    (of the size, of the frames) of what an adapter made of the request; a refusal names the
    field through ``names``."""
    raw = msgspec.json.encode(body)
    try:
        return raw, decode_task_body(raw, type(body))
    except ApiError as error:
        error.param = names(error.param) if error.param else None
        raise


class OpenAIVideos:
    def __init__(
        self,
        videos: VideoGenerator,
        tasks: V3VideoTasks,
        store: TaskStore,
        progress: dict[str, tuple[int, int]],
        *,
        retention_s: int,
    ) -> None:
        self.videos = videos
        self.tasks = tasks
        self.store = store
        self.progress = progress
        self.retention_s = retention_s

    async def create(self, request: VideoCreateRequest, owner: str | None) -> Video:
        mode: VideoMode = "text-to-video" if request.input_reference is None else "image-to-video"
        name = request.model or self.videos.default_model(mode)
        if name is None:
            raise bad_request(f"This server has no {mode} model.", "model")
        engine = self.videos.engine(name, mode, OPENAI_VIDEO_NAMES)
        defaults = await run_in(WorkPool.MEDIA, model_defaults, engine.spec)
        frames = round(_parse_seconds(request.seconds) * engine.fps)
        if frames < 1:
            raise bad_request(f"At {engine.fps} frames a second, {request.seconds} s holds no frame.", "seconds")
        # OpenAI asks in seconds: the count is the nearest the family makes (Wan 4k+1, LTX 8k+1).
        frames = defaults.family.nearest_frames(frames)
        if request.input_reference is None:
            task = await self._text_to_video(request, engine, frames, owner)
        else:
            task = await self._image_to_video(request, engine, defaults, frames, owner)
        return await self._video(task)

    async def _text_to_video(
        self, request: VideoCreateRequest, engine: VideoEngine, frames: int, owner: str | None
    ) -> Task:
        width, height = _parse_size(request.size) if request.size else engine.native_size
        raw, body = stored_body(
            Txt2VideoBody(
                model_name=engine.spec.name,
                prompts=[VideoPromptSegment(prompt=request.prompt, frames=frames)],
                width=width,
                height=height,
                seed=request.seed,
            )
        )
        return await self.tasks.submit(TaskType.TXT_TO_VIDEO, raw, body, owner, OPENAI_VIDEO_NAMES)

    async def _image_to_video(
        self,
        request: VideoCreateRequest,
        engine: VideoEngine,
        defaults: ModelDefaults,
        frames: int,
        owner: str | None,
    ) -> Task:
        assert request.input_reference is not None
        image_file = base64.b64encode(request.input_reference).decode()
        if request.size:
            # As with OpenAI, the reference image is the first frame: it must have the video's size.
            wanted = _parse_size(request.size)
            multiple = defaults.family.side_multiple
            actual = await run_in(WorkPool.MEDIA, _image_size, image_file, multiple)
            if actual != wanted:
                message = (
                    f"input_reference is {actual[0]}x{actual[1]} (in multiples of {multiple}); "
                    f"size asks {request.size}."
                )
                raise bad_request(message, "input_reference")
        raw, body = stored_body(
            Img2VideoBody(
                model_name=engine.spec.name,
                image_file=image_file,
                frames_num=frames,
                frames_per_second=engine.fps,
                image_file_resize_mode="ORIGINAL_DIMENSION",
                # Wan and LTX-Video animate the image as the prompt says; SVD reads no text.
                prompt=request.prompt if defaults.family.text_prompt_with_image else None,
                seed=request.seed,
            )
        )
        return await self.tasks.submit(TaskType.IMG_TO_VIDEO, raw, body, owner, OPENAI_VIDEO_NAMES)

    async def _task(self, video_id: str, owner: str | None) -> Task:
        task = await self.store.get(video_id)
        # Another key's job (or one made with no key) is reported as missing: ids are not probes.
        if task is None or task.task_type not in MODES or task.owner_key_id != owner:
            raise ApiError(ErrorCode.TASK_NOT_FOUND, f"Video '{video_id}' does not exist.", param="video_id")
        return task

    async def retrieve(self, video_id: str, owner: str | None) -> Video:
        return await self._video(await self._task(video_id, owner))

    async def content(self, video_id: str, owner: str | None, storage: LocalStorage) -> tuple[Path, str]:
        """The video file of a completed job and its type (mp4 for jobs made here)."""
        task = await self._task(video_id, owner)
        if task.status is not TaskStatus.SUCCEED:
            status = _STATUSES[task.status]
            raise bad_request(f"Video '{video_id}' is {status}; its content exists once it is completed.", "video_id")
        output = next((output for output in task.outputs if output.kind == "video"), None)
        path = storage.open_path(output.key) if output is not None else None
        if output is None or path is None:
            raise ApiError(ErrorCode.TASK_NOT_FOUND, f"The content of video '{video_id}' has expired.")
        return path, output.media_type

    async def _video(self, task: Task) -> Video:
        engine = self.videos.engine(task.model, MODES[task.task_type])
        defaults = await run_in(WorkPool.MEDIA, model_defaults, engine.spec)
        fps = engine.fps
        prompt: str | None = None
        if task.task_type is TaskType.TXT_TO_VIDEO:
            text = msgspec.json.decode(task.request, type=Txt2VideoBody)
            prompt = "\n".join(segment.prompt for segment in text.prompts)
            frames = sum(segment.frames for segment in text.prompts)
            size = (text.width, text.height)
        else:
            image = msgspec.json.decode(task.request, type=Img2VideoBody)
            frames = defaults.frames if image.frames_num is None else image.frames_num
            fps = fps if image.frames_per_second is None else image.frames_per_second
            if image.enable_frame_interpolation:  # a blended frame between each pair, twice the rate
                frames, fps = 2 * frames - 1, 2 * fps
            if image.image_file_resize_mode == "CROP_TO_ASPECT_RATIO":
                size = engine.native_size
            else:
                size = await run_in(WorkPool.MEDIA, _image_size, image.image_file, defaults.family.side_multiple)
        percent = self.progress.get(task.task_id, (task.progress_percent, task.eta))[0]
        completed_at = task.complete_time_ms // 1000 if task.complete_time_ms is not None else None
        return Video(
            id=task.task_id,
            model=task.model,
            status=_STATUSES[task.status],
            progress=100 if task.status is TaskStatus.SUCCEED else percent,
            created_at=task.submit_time_ms // 1000,
            completed_at=completed_at,
            expires_at=completed_at + self.retention_s
            if completed_at is not None and task.status is TaskStatus.SUCCEED
            else None,
            prompt=prompt,
            seconds=_format_seconds(frames, fps),
            size=f"{size[0]}x{size[1]}",
            error=VideoError(code=ErrorCode.TASK_FAILED.value, message=task.reason)
            if task.status is TaskStatus.FAILED
            else None,
        )
