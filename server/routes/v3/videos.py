"""/v3 video tasks: txt2video, img2video, and Novita's fixed-model video routes (wan-t2v,
wan-i2v, hunyuan-video-fast; server/routes/v3/model_video_tasks.py)."""

from __future__ import annotations

from litestar import Controller, Request, post

from schemas.v3.common import TaskSubmitted
from schemas.v3.model_videos import HunyuanVideoFastBody, WanI2VBody, WanT2VBody
from schemas.v3.videos import Img2VideoBody, Txt2VideoBody
from server.accounts_hooks import Caller
from server.routes.v3.model_video_tasks import ModelVideoRoutes
from server.routes.v3.video_tasks import V3VideoTasks
from server.tasks.models import TaskType
from server.validation import NovitaBody, refuse_empty_body


class V3VideoController(Controller):
    path = "/v3/async"
    tags = ["v3: async tasks"]
    # Bodies are decoded as novita-client sends them: explicit nulls read as "not given".
    dto = NovitaBody
    return_dto = None
    guards = [refuse_empty_body]

    # Each task stores its body as sent; Litestar keeps the bytes it decoded `data` from.

    @post("/txt2video", status_code=200, summary="Submit a text-to-video task", operation_id="txt2video")
    async def txt2video(
        self, request: Request, data: Txt2VideoBody, v3_videos: V3VideoTasks, caller: Caller
    ) -> TaskSubmitted:
        task = await v3_videos.submit(TaskType.TXT_TO_VIDEO, await request.body(), data, caller.key_id)
        return TaskSubmitted(task_id=task.task_id)

    @post("/img2video", status_code=200, summary="Submit an image-to-video task", operation_id="img2video")
    async def img2video(
        self, request: Request, data: Img2VideoBody, v3_videos: V3VideoTasks, caller: Caller
    ) -> TaskSubmitted:
        task = await v3_videos.submit(TaskType.IMG_TO_VIDEO, await request.body(), data, caller.key_id)
        return TaskSubmitted(task_id=task.task_id)

    @post("/wan-t2v", status_code=200, summary="Submit a Wan text-to-video task", operation_id="wan_t2v")
    async def wan_t2v(self, data: WanT2VBody, v3_model_videos: ModelVideoRoutes, caller: Caller) -> TaskSubmitted:
        task = await v3_model_videos.wan_t2v(data, caller.key_id)
        return TaskSubmitted(task_id=task.task_id)

    @post("/wan-i2v", status_code=200, summary="Submit a Wan image-to-video task", operation_id="wan_i2v")
    async def wan_i2v(self, data: WanI2VBody, v3_model_videos: ModelVideoRoutes, caller: Caller) -> TaskSubmitted:
        task = await v3_model_videos.wan_i2v(data, caller.key_id)
        return TaskSubmitted(task_id=task.task_id)

    @post(
        "/hunyuan-video-fast",
        status_code=200,
        summary="Submit a HunyuanVideo text-to-video task",
        operation_id="hunyuan_video_fast",
    )
    async def hunyuan_video_fast(
        self, data: HunyuanVideoFastBody, v3_model_videos: ModelVideoRoutes, caller: Caller
    ) -> TaskSubmitted:
        task = await v3_model_videos.hunyuan_video_fast(data, caller.key_id)
        return TaskSubmitted(task_id=task.task_id)
