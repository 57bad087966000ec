"""/v3/remove-background, /v3/replace-background, /v3/cleanup: Novita's synchronous image tools.

Each answers at once with ``{image_file, image_type}`` (the image, base64); the work itself is
the `ImageEditor` capability's (server/capabilities/image_editor.py). Each answer is one image at
`accounts.price_per_image`: reserved first, kept only once the image is made.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Awaitable, Callable

from litestar import Controller, Router, post

from engines.workpools import WorkPool, run_in
from schemas.v3.image_editor import CleanupBody, RemoveBackgroundBody, ReplaceBackgroundBody
from schemas.v3.image_tools import ImageFileResponse, ImageType
from server.accounts_hooks import Caller
from server.capabilities.calls import WireNames
from server.capabilities.image_editor import ImageEditor
from server.capabilities.images.inputs import base64_image_bytes
from server.settings import ImageToolSettings
from server.validation import NovitaBody, refuse_empty_body

V3_EDITOR_NAMES = WireNames({"image": "image_file", "mask": "mask_file"})
# Room in a body beside its base64 images: the prompt and the extra object.
_BODY_OVERHEAD_BYTES = 64 * 1024


async def _answer(caller: Caller, work: Callable[[], Awaitable[bytes]], image_type: ImageType) -> ImageFileResponse:
    """The tool's image as the answer, charged as one image (reserved before the work starts,
    nothing kept if it fails)."""
    async with caller.meter.images(1) as charge:
        data = await work()
        charge.add(1)
    return ImageFileResponse(image_file=base64.b64encode(data).decode("ascii"), image_type=image_type)


async def _image(value: str, field: str) -> bytes:
    # Decoding tens of megabytes of base64 takes a while: off the event loop.
    return await run_in(WorkPool.MEDIA, base64_image_bytes, value, V3_EDITOR_NAMES(field))


class V3ImageEditorController(Controller):
    path = "/v3"
    tags = ["v3: image tools"]
    dto = NovitaBody
    return_dto = None
    guards = [refuse_empty_body]

    @post(
        "/remove-background", status_code=200, summary="Remove an image's background", operation_id="remove_background"
    )
    async def remove_background(
        self, data: RemoveBackgroundBody, image_editor: ImageEditor, caller: Caller
    ) -> ImageFileResponse:
        image_type = data.extra.response_image_type
        image = await _image(data.image_file, "image")
        work = functools.partial(image_editor.remove_background, image, image_type, V3_EDITOR_NAMES)
        return await _answer(caller, work, image_type)

    @post(
        "/replace-background",
        status_code=200,
        summary="Replace an image's background from a prompt",
        operation_id="replace_background",
    )
    async def replace_background(
        self, data: ReplaceBackgroundBody, image_editor: ImageEditor, caller: Caller
    ) -> ImageFileResponse:
        image_type = data.extra.response_image_type
        image = await _image(data.image_file, "image")
        work = functools.partial(image_editor.replace_background, image, data.prompt, image_type, V3_EDITOR_NAMES)
        return await _answer(caller, work, image_type)

    @post("/cleanup", status_code=200, summary="Remove the masked objects from an image", operation_id="cleanup")
    async def cleanup(self, data: CleanupBody, image_editor: ImageEditor, caller: Caller) -> ImageFileResponse:
        image_type = data.extra.response_image_type
        image = await _image(data.image_file, "image")
        mask = await _image(data.mask_file, "mask")
        work = functools.partial(image_editor.cleanup, image, mask, image_type, V3_EDITOR_NAMES)
        return await _answer(caller, work, image_type)


def image_editor_router(settings: ImageToolSettings) -> Router:
    """The tools' routes, whose bodies may carry two images of image_tools.max_image_bytes each
    as base64 (cleanup's image and mask): larger than the app's own body limit."""
    base64_bytes = -(-settings.max_image_bytes // 3) * 4
    return Router(
        path="/",
        route_handlers=[V3ImageEditorController],
        request_max_body_size=2 * base64_bytes + _BODY_OVERHEAD_BYTES,
    )
