"""Images: generations (JSON) and edits (multipart): parse, call the adapter, encode."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, post
from litestar.datastructures import FormMultiDict, UploadFile
from litestar.enums import RequestEncodingType
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Body
from litestar.response.base import ASGIResponse

from schemas.openai.images import ImageEditRequest, ImageGenerationRequest, ImagesResponse
from server.accounts_hooks import Caller
from server.capabilities.images.inputs import MAX_INPUT_IMAGE_BYTES
from server.errors import bad_request
from server.hosts import output_base_url
from server.routes.openai.image_jobs import OpenAIImages
from server.routes.openapi import operation_id
from server.routes.responses import json_response
from server.validation import OpenAIBody, ParsedForm, convert, parse_into_data, read_form

# An edit uploads an image and a mask; the form fields beside them are small.
EDIT_MAX_BODY_BYTES = 2 * MAX_INPUT_IMAGE_BYTES + 1024 * 1024
_FILE_FIELDS = ("image", "image[]", "mask")
_RESPONSES = {200: ResponseSpec(data_container=ImagesResponse, description="Success")}


async def _file(form: FormMultiDict, names: tuple[str, ...], param: str) -> bytes | None:
    values = [value for name in names for value in form.getall(name, [])]
    if len(values) > 1:
        raise bad_request(f"Exactly one {param} may be sent; this server edits one image per request.", param)
    if not values:
        return None
    if not isinstance(values[0], UploadFile):
        raise bad_request(f"{param} must be sent as a file in multipart/form-data.", param)
    return await values[0].read()


async def _edit_request(request: Request) -> ImageEditRequest:
    """The edit form as a typed request. The openai SDK sends ``image`` (``image[]`` for a
    list), ``mask``, and every other field, ``extra_body`` included, as text parts."""
    if request.content_type[0] != RequestEncodingType.MULTI_PART:
        raise bad_request("images/edits takes multipart/form-data: the image is a file part.")
    form = await read_form(request)
    try:
        fields: dict[str, object] = {name: value for name, value in form.items() if name not in _FILE_FIELDS}
        for name in ("prompt", "model"):
            if not isinstance(fields.get(name), str):
                raise bad_request(f"{name} is required.", name)
        image = await _file(form, ("image", "image[]"), "image")
        if image is None:
            raise bad_request("image is required: send it as a file in multipart/form-data.", "image")
        mask = await _file(form, ("mask",), "mask")
    finally:
        await form.close()  # the uploads' spooled temporary files
    # strict=False: form values are text, so "2" becomes n=2 and "0.5" strength=0.5.
    return convert({**fields, "image": image, "mask": mask}, ImageEditRequest, strict=False)


class ImagesController(Controller):
    path = "/images"
    tags = ["openai: images"]

    @post(
        "/generations",
        status_code=200,
        operation_id=operation_id("createImage"),
        responses=_RESPONSES,
        dto=OpenAIBody,
        return_dto=None,
    )
    async def generations(
        self, request: Request, data: ImageGenerationRequest, images: OpenAIImages, caller: Caller
    ) -> ASGIResponse:
        return json_response(await images.generate(data, output_base_url(request), caller.meter))

    @post(
        "/edits",
        status_code=200,
        operation_id=operation_id("createImageEdit"),
        responses=_RESPONSES,
        request_max_body_size=EDIT_MAX_BODY_BYTES,
        # Parsed by its own rules (the SDK names a list of images "image[]", and extra_body
        # fields arrive as parts of their own), after the key guards.
        guards=[parse_into_data(_edit_request)],
        dto=ParsedForm,
        return_dto=None,
    )
    async def edits(
        self,
        request: Request,
        data: Annotated[ImageEditRequest, Body(media_type=RequestEncodingType.MULTI_PART)],
        images: OpenAIImages,
        caller: Caller,
    ) -> ASGIResponse:
        return json_response(await images.edit(data, output_base_url(request), caller.meter))
