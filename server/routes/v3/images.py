"""/v3 image tasks: txt2img, img2img, inpainting, upscale."""

from __future__ import annotations

from litestar import Controller, Request, post

from schemas.v3.common import TaskSubmitted
from schemas.v3.images import Img2ImgBody, InpaintingBody, Txt2ImgBody
from schemas.v3.upscale import UpscaleBody
from server.accounts_hooks import Caller
from server.state import AppState
from server.tasks.images import ImageBody
from server.tasks.models import TaskType
from server.validation import NovitaBody, refuse_empty_body


async def _submit_image(
    request: Request, app_state: AppState, task_type: TaskType, body: ImageBody, caller: Caller
) -> TaskSubmitted:
    # The task stores the body as sent; Litestar keeps the bytes it decoded `data` from.
    raw = await request.body()
    return TaskSubmitted(task_id=await app_state.image_tasks.submit(task_type, raw, body, caller.key_id))


class V3ImageController(Controller):
    path = "/v3/async"
    tags = ["v3: async tasks"]
    # Bodies are decoded as novita-client sends them: explicit nulls read as "not given".
    dto = NovitaBody
    return_dto = None
    guards = [refuse_empty_body]

    @post("/txt2img", status_code=200, summary="Submit a text-to-image task", operation_id="txt2img")
    async def txt2img(self, request: Request, data: Txt2ImgBody, app_state: AppState, caller: Caller) -> TaskSubmitted:
        return await _submit_image(request, app_state, TaskType.TXT_TO_IMG, data, caller)

    @post("/img2img", status_code=200, summary="Submit an image-to-image task", operation_id="img2img")
    async def img2img(self, request: Request, data: Img2ImgBody, app_state: AppState, caller: Caller) -> TaskSubmitted:
        return await _submit_image(request, app_state, TaskType.IMG_TO_IMG, data, caller)

    @post("/inpainting", status_code=200, summary="Submit an inpainting task", operation_id="inpainting")
    async def inpainting(
        self, request: Request, data: InpaintingBody, app_state: AppState, caller: Caller
    ) -> TaskSubmitted:
        return await _submit_image(request, app_state, TaskType.INPAINTING, data, caller)

    @post("/upscale", status_code=200, summary="Submit an image upscaling task", operation_id="upscale")
    async def upscale(self, request: Request, data: UpscaleBody, app_state: AppState, caller: Caller) -> TaskSubmitted:
        raw = await request.body()
        return TaskSubmitted(task_id=await app_state.upscale_tasks.submit(raw, data, caller.key_id))
