"""Task outputs by signed URL. The signature in the URL is the credential (SDKs download
without their API key), so this route sits outside the key guard."""

from __future__ import annotations

from litestar import Controller, get
from litestar.response import File

from schemas.errors import ApiError, ErrorCode
from server.routes.openapi import file_download
from server.storage.local import LocalStorage

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
_OTHER_CONTENT_TYPE = "application/octet-stream"


class FilesController(Controller):
    path = "/v3/files"
    tags = ["v3: files"]

    @get(
        "/{task_id:str}/{name:str}",
        summary="Download a task output by its signed URL",
        operation_id="downloadTaskOutput",
        operation_class=file_download([*_CONTENT_TYPES.values(), _OTHER_CONTENT_TYPE]),
    )
    async def download(self, task_id: str, name: str, expires: int, signature: str, storage: LocalStorage) -> File:
        key = f"{task_id}/{name}"
        if not storage.verify(key, expires, signature):
            raise ApiError(ErrorCode.ACCESS_DENY, "This URL is invalid or has expired.")
        path = storage.open_path(key)
        if path is None:
            raise ApiError(ErrorCode.TASK_NOT_FOUND, "This output no longer exists.")
        media_type = _CONTENT_TYPES.get(name.rsplit(".", 1)[-1], _OTHER_CONTENT_TYPE)
        return File(path=path, media_type=media_type, content_disposition_type="inline")
