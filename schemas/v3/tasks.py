"""GET /v3/async/task-result, in the seed's exact shape (numbers the seed shows as strings stay strings)."""

from __future__ import annotations

import msgspec


class NsfwResult(msgspec.Struct, kw_only=True):
    valid: bool
    confidence: float


class TaskImage(msgspec.Struct, kw_only=True):
    image_url: str
    image_url_ttl: str
    image_type: str
    nsfw_detection_result: NsfwResult | None = None


class TaskVideo(msgspec.Struct, kw_only=True):
    video_url: str
    video_url_ttl: str
    video_type: str


class TaskAudio(msgspec.Struct, kw_only=True):
    audio_url: str
    audio_url_ttl: str
    audio_type: str


class TaskInfo(msgspec.Struct, kw_only=True):
    task_id: str
    task_type: str
    status: str
    reason: str
    eta: int
    progress_percent: int


class DebugInfo(msgspec.Struct, kw_only=True):
    request_info: str
    submit_time_ms: str
    execute_time_ms: str
    complete_time_ms: str


class TaskExtra(msgspec.Struct, kw_only=True):
    seed: str
    enable_nsfw_detection: bool
    debug_info: DebugInfo


class TaskResult(msgspec.Struct, kw_only=True):
    extra: TaskExtra
    task: TaskInfo
    images: list[TaskImage]
    videos: list[TaskVideo]
    audios: list[TaskAudio]


class TaskCancelBody(msgspec.Struct, kw_only=True):
    """POST /v3/async/task-cancel (omniserve's own: Novita documents no cancel route)."""

    task_id: str
