"""The task record and its vocabulary, in Novita v3's own status and type names."""

from __future__ import annotations

import enum
import time
import uuid

import msgspec


class TaskStatus(enum.StrEnum):
    QUEUED = "TASK_STATUS_QUEUED"
    PROCESSING = "TASK_STATUS_PROCESSING"
    SUCCEED = "TASK_STATUS_SUCCEED"
    FAILED = "TASK_STATUS_FAILED"

    @property
    def finished(self) -> bool:
        return self in (TaskStatus.SUCCEED, TaskStatus.FAILED)


class TaskType(enum.StrEnum):
    TXT_TO_IMG = "TXT_TO_IMG"
    IMG_TO_IMG = "IMG_TO_IMG"
    INPAINTING = "INPAINTING"
    UPSCALE = "UPSCALE"
    TXT_TO_VIDEO = "TXT_TO_VIDEO"
    IMG_TO_VIDEO = "IMG_TO_VIDEO"
    TXT_TO_SPEECH = "TXT_TO_SPEECH"


def new_task_id() -> str:
    return str(uuid.uuid4())


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class S3Object(msgspec.Struct, kw_only=True):
    """Where a copy of an output was uploaded for extra.custom_storage.aws_s3."""

    region: str
    bucket: str
    key: str


class OutputFile(msgspec.Struct, kw_only=True):
    kind: str  # "image" | "video" | "audio": picks the result list (images/videos/audios)
    key: str  # storage key, "<task_id>/<name>.<ext>"
    media_type: str  # "png", "mp4", "wav", ...: reported as image_type/video_type/audio_type
    nsfw: dict[str, object] | None = None  # nsfw_detection_result, when detection ran
    # Set once the output is in the client's bucket: the result then links that object.
    s3: S3Object | None = None


class Task(msgspec.Struct, kw_only=True):
    task_type: TaskType
    model: str
    # The original JSON body: the runner re-decodes it, so a task survives a restart
    # without a second schema for "what was asked".
    request: bytes
    owner_key_id: str | None = None
    task_id: str = msgspec.field(default_factory=new_task_id)
    status: TaskStatus = TaskStatus.QUEUED
    progress_percent: int = 0  # 0..100
    eta: int = 0  # seconds
    reason: str = ""
    seed: int | None = None
    outputs: list[OutputFile] = msgspec.field(default_factory=list)
    submit_time_ms: int = msgspec.field(default_factory=now_ms)
    execute_time_ms: int | None = None
    complete_time_ms: int | None = None
    webhook_url: str | None = None
    # W3C trace headers of the submitting request, so the run can join its trace later.
    trace_context: dict[str, str] = msgspec.field(default_factory=dict)
    url_ttl_s: int = 3600
    # How many times a runner took the task (mark_processing).
    attempts: int = 0
