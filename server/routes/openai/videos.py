"""Video jobs: create (multipart, as the openai SDK sends it, or JSON), retrieve, download."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import File

from schemas.openai.videos import Video, VideoCreateRequest
from server.accounts_hooks import Caller
from server.capabilities.images.inputs import MAX_INPUT_IMAGE_BYTES, base64_image_bytes
from server.errors import bad_request
from server.routes.openai.video_jobs import OpenAIVideos
from server.routes.openapi import file_download, operation_id
from server.storage.local import LocalStorage
from server.validation import ParsedForm, convert, parse_into_data, read_form

_MEDIA_TYPES = {"mp4": "video/mp4", "webm": "video/webm", "gif": "image/gif"}
_OTHER_MEDIA_TYPE = "application/octet-stream"
# One reference image plus the text fields.
CREATE_MAX_BODY_BYTES = 2 * MAX_INPUT_IMAGE_BYTES


def _reference(value: Any) -> bytes | None:
    """The reference image's bytes: an uploaded file, or an image_url data URL."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("image_url")
        if not isinstance(value, str) or not value.startswith("data:"):
            raise bad_request("input_reference.image_url must be a base64 data: URL.", "input_reference")
        return base64_image_bytes(value, "input_reference")
    if isinstance(value, bytes):
        return value
    raise bad_request("input_reference must be an image file or {image_url: <data URL>}.", "input_reference")


async def _create_request(request: Request) -> VideoCreateRequest:
    fields: dict[str, Any]
    if request.content_type[0] == RequestEncodingType.MULTI_PART:
        form = await read_form(request)
        try:
            fields = {}
            for name, value in form.items():
                if isinstance(value, UploadFile):
                    fields[name] = await value.read()
                elif name == "input_reference[image_url]":  # the SDK's form spelling of the object
                    fields["input_reference"] = {"image_url": value}
                else:
                    fields[name] = value
        finally:
            await form.close()
    else:
        try:
            fields = msgspec.json.decode(await request.body())
        except msgspec.DecodeError:
            raise bad_request("The body is neither multipart/form-data nor JSON.") from None
        if not isinstance(fields, dict):
            raise bad_request("The body must be a JSON object.")
    fields["input_reference"] = _reference(fields.get("input_reference"))
    # strict=False: form values are text, so seconds may arrive as 4 or "4" and seed as "7".
    return convert(fields, VideoCreateRequest, strict=False)


class VideosController(Controller):
    path = "/videos"
    tags = ["openai: videos"]

    @post(
        "/",
        status_code=200,
        operation_id=operation_id("createVideo"),
        request_max_body_size=CREATE_MAX_BODY_BYTES,
        summary="Create a video job",
        # Multipart as the openai SDK sends it, or the same fields as a JSON object; parsed
        # by its own rules after the key guards.
        guards=[parse_into_data(_create_request)],
        dto=ParsedForm,
        return_dto=None,
    )
    async def create(
        self,
        data: Annotated[VideoCreateRequest, Body(media_type=RequestEncodingType.MULTI_PART)],
        videos: OpenAIVideos,
        caller: Caller,
    ) -> Video:
        return await videos.create(data, caller.key_id)

    @get("/{video_id:str}", operation_id=operation_id("getVideo"), summary="Retrieve a video job")
    async def retrieve(self, video_id: str, videos: OpenAIVideos, caller: Caller) -> Video:
        return await videos.retrieve(video_id, caller.key_id)

    @get(
        "/{video_id:str}/content",
        operation_id=operation_id("retrieveVideoContent"),
        summary="Download a video job's file",
        description="The video in the type it was made in: MP4 for jobs made here; WebM or GIF for /v3 video tasks.",
        operation_class=file_download([*_MEDIA_TYPES.values(), _OTHER_MEDIA_TYPE]),
    )
    async def content(
        self, video_id: str, videos: OpenAIVideos, storage: LocalStorage, caller: Caller, variant: str = "video"
    ) -> File:
        if variant != "video":
            raise bad_request(f"variant {variant!r} is not offered; only 'video'.", "variant")
        path, video_type = await videos.content(video_id, caller.key_id, storage)
        return File(path=path, media_type=_MEDIA_TYPES.get(video_type, _OTHER_MEDIA_TYPE))
