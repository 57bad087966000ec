"""The task-result body, in the seed's exact shape, with signed URLs that resolve."""

from __future__ import annotations

import collections
import functools
from collections.abc import Awaitable, Callable, Mapping

import msgspec

from schemas.errors import ApiError, ErrorCode
from schemas.v3.images import Img2ImgBody, InpaintingBody, Txt2ImgBody
from schemas.v3.speech import Txt2SpeechBody
from schemas.v3.tasks import DebugInfo, NsfwResult, TaskAudio, TaskExtra, TaskImage, TaskInfo, TaskResult, TaskVideo
from schemas.v3.upscale import UpscaleBody
from schemas.v3.videos import Img2VideoBody, Txt2VideoBody
from server.storage.local import LocalStorage
from server.tasks.models import S3Object, Task, TaskStatus, TaskType
from server.tasks.store import TaskStore
from server.tasks.webhooks import envelope

_encoder = msgspec.json.Encoder()

# A signed URL for an output's copy in the client's bucket, valid for the TTL given;
# None when it cannot be signed (the local copy is linked instead).
Presigner = Callable[[S3Object, int], str | None]


def _ms(value: int | None) -> str:
    return str(value) if value is not None else ""


# The schema each task kind's stored body was accepted under: what the echo may show.
ECHO_SCHEMAS: dict[TaskType, type[msgspec.Struct]] = {
    TaskType.TXT_TO_IMG: Txt2ImgBody,
    TaskType.IMG_TO_IMG: Img2ImgBody,
    TaskType.INPAINTING: InpaintingBody,
    TaskType.UPSCALE: UpscaleBody,
    TaskType.TXT_TO_VIDEO: Txt2VideoBody,
    TaskType.IMG_TO_VIDEO: Img2VideoBody,
    TaskType.TXT_TO_SPEECH: Txt2SpeechBody,
}
# Echoes of recently polled tasks; small (no images, only known fields), keyed by task id.
ECHO_CACHE_SIZE = 1024


def is_image_field(name: str) -> bool:
    """Whether a body field carries an input image (base64 or a file's contents)."""
    return name.endswith(("base64", "image_file")) or name in ("image", "init_image", "mask_image")


def _elided(value: str) -> str:
    return f"<{len(value)} base64 characters>"


def _echo(value: object, info: msgspec.inspect.Type) -> object:
    """``value`` as its schema ``info`` knows it: fields the schema does not declare are
    dropped and every input image, at any depth (ControlNet units are a list), elided."""
    if isinstance(info, msgspec.inspect.Metadata):
        return _echo(value, info.type)
    if isinstance(info, msgspec.inspect.StructType):
        if not isinstance(value, dict):
            return None
        echoed: dict[str, object] = {}
        for field in info.fields:
            if field.encode_name not in value:
                continue
            item = value[field.encode_name]
            if is_image_field(field.encode_name) and isinstance(item, str):
                echoed[field.encode_name] = _elided(item)
            else:
                echoed[field.encode_name] = _echo(item, field.type)
        return echoed
    if isinstance(info, msgspec.inspect.UnionType):
        for member in info.types:
            if isinstance(member, (msgspec.inspect.StructType, msgspec.inspect.DictType)) and isinstance(value, dict):
                return _echo(value, member)
            if isinstance(member, (msgspec.inspect.ListType, msgspec.inspect.TupleType)) and isinstance(value, list):
                return _echo(value, member)
        return value if _is_scalar(value) else None
    if isinstance(info, (msgspec.inspect.ListType, msgspec.inspect.SetType, msgspec.inspect.FrozenSetType)):
        return [_echo(item, info.item_type) for item in value] if isinstance(value, list) else None
    if isinstance(info, msgspec.inspect.DictType):
        if not isinstance(value, dict):
            return None
        return {key: _echo(item, info.value_type) for key, item in value.items()}
    if isinstance(info, msgspec.inspect.AnyType):
        return _any_echo(value)
    return value if _is_scalar(value) else None


def _any_echo(value: object) -> object:
    """A free-form field (``extra.enterprise_plan.metadata``): kept, but no long string in it,
    whatever its key, since nothing says what it is."""
    if isinstance(value, dict):
        return {key: _any_echo(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_any_echo(item) for item in value]
    if isinstance(value, str) and len(value) > 256:
        return _elided(value)
    return value


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


@functools.cache
def _schema_info(task_type: TaskType) -> msgspec.inspect.Type:
    return msgspec.inspect.type_info(ECHO_SCHEMAS[task_type])


def request_echo(task_type: TaskType, raw: bytes) -> str:
    """The request as submitted, as the seed's debug info echoes it: only the fields the
    task's schema declares, input images elided (megabytes of base64 in every poll and
    webhook would help no one)."""
    try:
        decoded = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return ""
    return _encoder.encode(_echo(decoded, _schema_info(task_type))).decode()


class EchoCache:
    """Echoes by task id, least recently used out first: clients poll a task many times a
    second, and decoding its body each time is waste. Keyed by id, never by the body, so
    the cache holds only the small echoes."""

    def __init__(self, size: int = ECHO_CACHE_SIZE) -> None:
        self.size = size
        self._echoes: collections.OrderedDict[str, str] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._echoes)

    def __call__(self, task: Task) -> str:
        echo = self._echoes.get(task.task_id)
        if echo is not None:
            self._echoes.move_to_end(task.task_id)
            return echo
        echo = request_echo(task.task_type, task.request)
        self._echoes[task.task_id] = echo
        if len(self._echoes) > self.size:
            self._echoes.popitem(last=False)
        return echo


_echoes = EchoCache()


def build_result(
    task: Task,
    storage: LocalStorage,
    base_url: str,
    progress: tuple[int, int] | None = None,
    *,
    presign: Presigner | None = None,
) -> TaskResult:
    # Live progress from this process, else what the replica running it wrote (shared store).
    percent, eta = progress if progress is not None else (task.progress_percent, task.eta)
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
    request_info = _echoes(task)
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
        self,
        store: TaskStore,
        progress: Mapping[str, tuple[int, int]],
        storage: LocalStorage,
        presign: Presigner,
        cancel: Callable[[Task], Awaitable[bool]] | None = None,
    ) -> None:
        self.store = store
        self.progress = progress
        self.storage = storage
        self.presign = presign
        self._cancel = cancel

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

    async def cancel(self, task_id: str, caller_key_id: str | None, base_url: str) -> TaskResult:
        """Cancel the caller's task (the runner fails, refunds and notifies it); the result as it
        stands after. A task that already ended is answered as it is."""
        task = await self.owned_task(task_id, caller_key_id)
        if not task.status.finished and self._cancel is not None:
            await self._cancel(task)
        return await self.result(task_id, caller_key_id, base_url)
