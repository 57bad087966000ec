"""Async image task submission, task results, and the signed output files."""

from __future__ import annotations

from litestar import Controller, Request, get, post
from litestar.response import File

from schemas.errors import ApiError, ErrorCode
from schemas.v3.common import TaskSubmitted
from schemas.v3.images import Img2ImgBody, InpaintingBody, Txt2ImgBody
from schemas.v3.speech import Txt2SpeechBody
from schemas.v3.tasks import TaskResult
from schemas.v3.upscale import UpscaleBody
from schemas.v3.videos import Img2VideoBody, Txt2VideoBody
from server.state import AppState
from server.tasks.images import ImageBody
from server.tasks.models import TaskType
from server.tasks.results import build_result
from server.validation import NovitaBody, refuse_empty_body

_CONTENT_TYPES = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "mp4": "video/mp4",
    "webm": "video/webm",
    "gif": "image/gif",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
}


def _caller(request: Request) -> str | None:
    key_id: str | None = request.scope.get("state", {}).get("api_key_id")
    return key_id


async def _submit_image(request: Request, app_state: AppState, task_type: TaskType, body: ImageBody) -> TaskSubmitted:
    # The task stores the body as sent; Litestar keeps the bytes it decoded `data` from.
    raw = await request.body()
    return TaskSubmitted(task_id=await app_state.image_tasks.submit(task_type, raw, body, _caller(request)))


class AsyncTaskController(Controller):
    path = "/v3/async"
    tags = ["v3: async tasks"]
    # Bodies are decoded as novita-client sends them: explicit nulls read as "not given".
    dto = NovitaBody
    return_dto = None
    guards = [refuse_empty_body]

    @post("/txt2img", status_code=200, summary="Submit a text-to-image task")
    async def txt2img(self, request: Request, data: Txt2ImgBody, app_state: AppState) -> TaskSubmitted:
        return await _submit_image(request, app_state, TaskType.TXT_TO_IMG, data)

    @post("/img2img", status_code=200, summary="Submit an image-to-image task")
    async def img2img(self, request: Request, data: Img2ImgBody, app_state: AppState) -> TaskSubmitted:
        return await _submit_image(request, app_state, TaskType.IMG_TO_IMG, data)

    @post("/inpainting", status_code=200, summary="Submit an inpainting task")
    async def inpainting(self, request: Request, data: InpaintingBody, app_state: AppState) -> TaskSubmitted:
        return await _submit_image(request, app_state, TaskType.INPAINTING, data)

    @post("/upscale", status_code=200, summary="Submit an image upscaling task")
    async def upscale(self, request: Request, data: UpscaleBody, app_state: AppState) -> TaskSubmitted:
        raw = await request.body()
        return TaskSubmitted(task_id=await app_state.upscale_tasks.submit(raw, data, _caller(request)))

    @post("/txt2speech", status_code=200, summary="Submit a text-to-speech task")
    async def txt2speech(self, request: Request, data: Txt2SpeechBody, app_state: AppState) -> TaskSubmitted:
        raw = await request.body()
        return TaskSubmitted(task_id=await app_state.speech_tasks.submit(raw, data, _caller(request)))

    @post("/txt2video", status_code=200, summary="Submit a text-to-video task")
    async def txt2video(self, request: Request, data: Txt2VideoBody, app_state: AppState) -> TaskSubmitted:
        task = await app_state.video_tasks.submit_txt2video(await request.body(), data, _caller(request))
        return TaskSubmitted(task_id=task.task_id)

    @post("/img2video", status_code=200, summary="Submit an image-to-video task")
    async def img2video(self, request: Request, data: Img2VideoBody, app_state: AppState) -> TaskSubmitted:
        task = await app_state.video_tasks.submit_img2video(await request.body(), data, _caller(request))
        return TaskSubmitted(task_id=task.task_id)

    @get("/task-result", summary="Poll an async task")
    async def task_result(self, request: Request, task_id: str, app_state: AppState) -> TaskResult:
        task = await app_state.task_store.get(task_id)
        # Another key's task is reported as missing, not as forbidden: ids are not probes.
        if task is None or (task.owner_key_id is not None and task.owner_key_id != _caller(request)):
            raise ApiError(ErrorCode.TASK_NOT_FOUND, f"Task '{task_id}' does not exist.", param="task_id")
        progress = app_state.task_runner.progress.get(task_id)
        return build_result(
            task, app_state.storage, str(request.base_url), progress, presign=app_state.s3_uploader.presigned_url
        )


class FilesController(Controller):
    """Task outputs. The signature in the URL is the credential (SDKs download without
    their API key), so these routes sit outside the key guard."""

    path = "/v3/files"
    tags = ["v3: files"]

    @get("/{task_id:str}/{name:str}", summary="Download a task output by its signed URL")
    async def download(self, task_id: str, name: str, expires: int, signature: str, app_state: AppState) -> File:
        key = f"{task_id}/{name}"
        if not app_state.storage.verify(key, expires, signature):
            raise ApiError(ErrorCode.ACCESS_DENY, "This URL is invalid or has expired.")
        path = app_state.storage.open_path(key)
        if path is None:
            raise ApiError(ErrorCode.TASK_NOT_FOUND, "This output no longer exists.")
        media_type = _CONTENT_TYPES.get(name.rsplit(".", 1)[-1], "application/octet-stream")
        return File(path=path, media_type=media_type, content_disposition_type="inline")
