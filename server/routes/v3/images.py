"""/v3 image tasks: txt2img, img2img, inpainting, upscale."""

from __future__ import annotations

from litestar import Controller, Request, post

from schemas.v3.common import TaskSubmitted
from schemas.v3.images import Img2ImgBody, InpaintingBody, Txt2ImgBody
from schemas.v3.upscale import UpscaleBody
from server.accounts_hooks import Caller
from server.routes.v3.image_tasks import V3ImageTasks
from server.routes.v3.upscale_tasks import V3UpscaleTasks
from server.tasks.models import TaskType
from server.validation import NovitaBody, refuse_empty_body


class V3ImageController(Controller):
    path = "/v3/async"
    tags = ["v3: async tasks"]
    # Bodies are decoded as novita-client sends them: explicit nulls read as "not given".
    dto = NovitaBody
    return_dto = None
    guards = [refuse_empty_body]

    # Each task stores its body as sent; Litestar keeps the bytes it decoded `data` from.

    @post("/txt2img", status_code=200, summary="Submit a text-to-image task", operation_id="txt2img")
    async def txt2img(
        self, request: Request, data: Txt2ImgBody, v3_images: V3ImageTasks, caller: Caller
    ) -> TaskSubmitted:
        task_id = await v3_images.submit(TaskType.TXT_TO_IMG, await request.body(), data, caller.key_id)
        return TaskSubmitted(task_id=task_id)

    @post("/img2img", status_code=200, summary="Submit an image-to-image task", operation_id="img2img")
    async def img2img(
        self, request: Request, data: Img2ImgBody, v3_images: V3ImageTasks, caller: Caller
    ) -> TaskSubmitted:
        task_id = await v3_images.submit(TaskType.IMG_TO_IMG, await request.body(), data, caller.key_id)
        return TaskSubmitted(task_id=task_id)

    @post("/inpainting", status_code=200, summary="Submit an inpainting task", operation_id="inpainting")
    async def inpainting(
        self, request: Request, data: InpaintingBody, v3_images: V3ImageTasks, caller: Caller
    ) -> TaskSubmitted:
        task_id = await v3_images.submit(TaskType.INPAINTING, await request.body(), data, caller.key_id)
        return TaskSubmitted(task_id=task_id)

    @post("/upscale", status_code=200, summary="Submit an image upscaling task", operation_id="upscale")
    async def upscale(
        self, request: Request, data: UpscaleBody, v3_upscale: V3UpscaleTasks, caller: Caller
    ) -> TaskSubmitted:
        return TaskSubmitted(task_id=await v3_upscale.submit(await request.body(), data, caller.key_id))
