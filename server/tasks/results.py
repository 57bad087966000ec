"""The task-result body, in the seed's exact shape, with signed URLs that resolve."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import msgspec

from schemas.errors import ApiError, ErrorCode
from schemas.v3.tasks import DebugInfo, NsfwResult, TaskAudio, TaskExtra, TaskImage, TaskInfo, TaskResult, TaskVideo
from server.storage.local import LocalStorage
from server.tasks.models import S3Object, Task, TaskStatus
from server.tasks.store import TaskStore
from server.tasks.webhooks import envelope

_encoder = msgspec.json.Encoder()

# A signed URL for an output's copy in the client's bucket, valid for the TTL given;
# None when it cannot be signed (the local copy is linked instead).
Presigner = Callable[[S3Object, int], str | None]


def _ms(value: int | None) -> str:
    return str(value) if value is not None else ""


def _without_images(value: object) -> object:
    if isinstance(value, dict):
        return {
            key: f"<{len(item)} base64 characters>"
            if key.endswith(("base64", "image_file")) and isinstance(item, str)
            else _without_images(item)
            for key, item in value.items()
        }
    return value


@functools.lru_cache(maxsize=256)
def _request_info(raw: bytes) -> str:
    """The request as submitted, with input images elided: the seed's debug info echoes the
    parameters, and megabytes of base64 in every poll would help no one. Cached: clients
    poll the same task many times a second, and re-encoding its body each time is waste."""
    try:
        return _encoder.encode(_without_images(msgspec.json.decode(raw))).decode()
    except msgspec.DecodeError:
        return ""


def build_result(
    task: Task,
    storage: LocalStorage,
    base_url: str,
    progress: tuple[int, int] | None = None,
    *,
    presign: Presigner | None = None,
) -> TaskResult:
    percent, eta = progress if progress is not None else (0, 0)
    if task.status is TaskStatus.SUCCEED:
        percent, eta = 100, 0
    images: list[TaskImage] = []
    videos: list[TaskVideo] = []
    audios: list[TaskAudio] = []
    if task.status is TaskStatus.SUCCEED:
        ttl = str(task.url_ttl_s)
        for output in task.outputs:
            url = None
            if output.s3 is not None and presign is not None:
                # extra.custom_storage: the object in the client's bucket, which outlives the local copy.
                url = presign(output.s3, task.url_ttl_s)
            if url is None:
                url = base_url.rstrip("/") + storage.signed_path(output.key, task.url_ttl_s)
            if output.kind == "image":
                nsfw = msgspec.convert(output.nsfw, NsfwResult) if output.nsfw else None
                images.append(
                    TaskImage(
                        image_url=url, image_url_ttl=ttl, image_type=output.media_type, nsfw_detection_result=nsfw
                    )
                )
            elif output.kind == "video":
                videos.append(TaskVideo(video_url=url, video_url_ttl=ttl, video_type=output.media_type))
            elif output.kind == "audio":
                audios.append(TaskAudio(audio_url=url, audio_url_ttl=ttl, audio_type=output.media_type))
    request_info = _request_info(task.request)
    return TaskResult(
        extra=TaskExtra(
            seed=str(task.seed) if task.seed is not None else "",
            enable_nsfw_detection=any(output.nsfw is not None for output in task.outputs),
            debug_info=DebugInfo(
                request_info=request_info,
                submit_time_ms=_ms(task.submit_time_ms),
                execute_time_ms=_ms(task.execute_time_ms),
                complete_time_ms=_ms(task.complete_time_ms),
            ),
        ),
        task=TaskInfo(
            task_id=task.task_id,
            task_type=task.task_type.value,
            status=task.status.value,
            reason=task.reason,
            eta=eta,
            progress_percent=percent,
        ),
        images=images,
        videos=videos,
        audios=audios,
    )


def encode_result(result: TaskResult) -> bytes:
    return _encoder.encode(result)


# A vendor API's own webhook body for a task it submitted, or None for Novita's envelope.
VendorWebhookBody = Callable[[Task, str], bytes | None]


class WebhookBodies:
    """Renders a finished task's webhook body: a vendor family's own shape when the task came
    through one (the Stable Diffusion API posts its body unwrapped), else Novita's envelope."""

    def __init__(self, storage: LocalStorage, public_url: str, presign: Presigner) -> None:
        self.storage = storage
        self.public_url = public_url
        self.presign = presign
        self.vendor_bodies: list[VendorWebhookBody] = []

    def __call__(self, task: Task) -> bytes:
        for vendor_body in self.vendor_bodies:
            body = vendor_body(task, self.public_url)
            if body is not None:
                return body
        result = build_result(task, self.storage, self.public_url, presign=self.presign)
        return envelope(encode_result(result))


class TaskResults:
    """What a poll of a task answers: its record, with live progress and fresh signed URLs."""

    def __init__(
        self, store: TaskStore, progress: Mapping[str, tuple[int, int]], storage: LocalStorage, presign: Presigner
    ) -> None:
        self.store = store
        self.progress = progress
        self.storage = storage
        self.presign = presign

    async def owned_task(self, task_id: str, caller_key_id: str | None) -> Task:
        task = await self.store.get(task_id)
        # Another key's task is reported as missing, not as forbidden: ids are not probes. A task
        # made on an open server (no owner) stays with open callers, not with keys made later.
        if task is None or task.owner_key_id != caller_key_id:
            raise ApiError(ErrorCode.TASK_NOT_FOUND, f"Task '{task_id}' does not exist.", param="task_id")
        return task

    async def result(self, task_id: str, caller_key_id: str | None, base_url: str) -> TaskResult:
        task = await self.owned_task(task_id, caller_key_id)
        return build_result(task, self.storage, base_url, self.progress.get(task_id), presign=self.presign)
