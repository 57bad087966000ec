"""Novita's fixed-model video routes (/v3/async/wan-t2v, /wan-i2v, /hunyuan-video-fast) over
the /v3 video tasks: each request becomes the txt2video or img2video body it stands for, stored
and run as that task, so its result is the usual task result with one file in `videos[]`.

Which model serves a route: the body's `model_name` (Novita's `wan2.1-t2v`, `wan2.1-i2v`,
`hunyuan-video-fast`) must be a catalog video model's name or alias, of the route's family
(Wan, HunyuanVideo) and mode; give a catalog entry that alias to serve the route under Novita's
model id. The clip is the pages' 5 seconds at the model's frame rate (Wan at 16 fps: 81
frames), HunyuanVideo's the body's `frames`.
"""

from __future__ import annotations

import base64
import io
import math

from engines.base import VideoEngine, VideoMode
from engines.video.families import HUNYUAN_FAMILY, WAN_FAMILY, VideoFamily, model_defaults
from engines.workpools import WorkPool, run_in
from schemas.v3.model_videos import (
    HUNYUAN_SIZES,
    WAN_SECONDS,
    WAN_SIZES,
    HunyuanVideoFastBody,
    WanI2VBody,
    WanT2VBody,
)
from schemas.v3.videos import Img2VideoBody, Txt2VideoBody, VideoPromptSegment
from server.capabilities.calls import WireNames
from server.errors import bad_request
from server.outbound import OutboundHttp
from server.routes.openai.video_jobs import stored_body
from server.routes.v3.video_tasks import V3VideoTasks
from server.routes.vendor.downloads import fetch_image
from server.tasks.models import Task, TaskType

# The job's and the stored bodies' fields as these routes name them.
ROUTE_NAMES = WireNames(
    {
        "model": "model_name",
        "model_name": "model_name",
        "prompts": "frames",
        "image": "image_url",
        "image_file": "image_url",
        "image_prompt": "prompt",
    }
)


def _check_size(width: int, height: int, sizes: set[tuple[int, int]]) -> None:
    if (width, height) not in sizes:
        allowed = ", ".join(f"{w}x{h}" for w, h in sorted(sizes))
        raise bad_request(f"height {height} does not go with width {width}; sizes: {allowed}.", "height")


def _refuse_loras(loras: object) -> None:
    if loras:
        raise bad_request("LoRAs by path are not available on this server.", "loras")


def _resized_to_area(image: bytes, width: int, height: int, multiple: int) -> tuple[str, tuple[int, int]]:
    """The image resized to about width x height pixels in its own aspect ratio (the pages: the
    size sets the clarity, the video keeps the image's aspect), sides in the family's multiple;
    base64 PNG and its size. Blocking."""
    from PIL import Image

    with Image.open(io.BytesIO(image)) as opened:
        source = opened.convert("RGB")
    aspect = source.width / source.height
    area = width * height
    size = (
        max(multiple, int(math.sqrt(area * aspect)) // multiple * multiple),
        max(multiple, int(math.sqrt(area / aspect)) // multiple * multiple),
    )
    buffer = io.BytesIO()
    source.resize(size, Image.Resampling.LANCZOS).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode(), size


class ModelVideoRoutes:
    def __init__(self, tasks: V3VideoTasks, outbound: OutboundHttp, *, fetch_timeout_s: float) -> None:
        self.tasks = tasks
        self.outbound = outbound
        self.fetch_timeout_s = fetch_timeout_s

    async def _engine(self, name: str, mode: VideoMode, family: VideoFamily, route: str) -> VideoEngine:
        engine = self.tasks.engine(name, mode, ROUTE_NAMES)
        defaults = await run_in(WorkPool.MEDIA, model_defaults, engine.spec)
        if defaults.family is not family:
            message = f"/v3/async/{route} serves {family.name} models; {name} is a {defaults.family.name} model."
            raise bad_request(message, "model_name")
        return engine

    async def wan_t2v(self, body: WanT2VBody, owner: str | None) -> Task:
        _check_size(body.width, body.height, WAN_SIZES)
        _refuse_loras(body.loras)
        engine = await self._engine(body.model_name, "text-to-video", WAN_FAMILY, "wan-t2v")
        text = Txt2VideoBody(
            model_name=engine.spec.name,
            prompts=[
                VideoPromptSegment(prompt=body.prompt, frames=WAN_FAMILY.nearest_frames(WAN_SECONDS * engine.fps))
            ],
            width=body.width,
            height=body.height,
            steps=body.steps,
            negative_prompt=body.negative_prompt,
            guidance_scale=body.guidance_scale,
            seed=body.seed,
            flow_shift=body.flow_shift,
            extra=body.extra,
        )
        return await self._text_task(text, owner)

    async def hunyuan_video_fast(self, body: HunyuanVideoFastBody, owner: str | None) -> Task:
        _check_size(body.width, body.height, HUNYUAN_SIZES)
        engine = await self._engine(body.model_name, "text-to-video", HUNYUAN_FAMILY, "hunyuan-video-fast")
        text = Txt2VideoBody(
            model_name=engine.spec.name,
            prompts=[VideoPromptSegment(prompt=body.prompt, frames=body.frames)],
            width=body.width,
            height=body.height,
            steps=body.steps,
            seed=body.seed,
            extra=body.extra,
        )
        return await self._text_task(text, owner)

    async def _text_task(self, body: Txt2VideoBody, owner: str | None) -> Task:
        # Stored as the txt2video body it stands for; its schema checks what was made of the request.
        raw, stored = stored_body(body, ROUTE_NAMES)
        return await self.tasks.submit(TaskType.TXT_TO_VIDEO, raw, stored, owner, ROUTE_NAMES)

    async def wan_i2v(self, body: WanI2VBody, owner: str | None) -> Task:
        _check_size(body.width, body.height, WAN_SIZES)
        _refuse_loras(body.loras)
        for field, asked in (("enable_safety_checker", body.enable_safety_checker), ("fast_mode", body.fast_mode)):
            if asked:
                raise bad_request(f"{field} is not available on this server.", field)
        engine = await self._engine(body.model_name, "image-to-video", WAN_FAMILY, "wan-i2v")
        image = await fetch_image(self.outbound, body.image_url, param="image_url", timeout_s=self.fetch_timeout_s)
        multiple = WAN_FAMILY.side_multiple
        image_file, _ = await run_in(WorkPool.MEDIA, _resized_to_area, image, body.width, body.height, multiple)
        raw, stored = stored_body(
            Img2VideoBody(
                model_name=engine.spec.name,
                image_file=image_file,
                image_file_resize_mode="ORIGINAL_DIMENSION",
                frames_num=WAN_FAMILY.nearest_frames(WAN_SECONDS * engine.fps),
                steps=body.steps,
                seed=body.seed,
                prompt=body.prompt,
                negative_prompt=body.negative_prompt,
                guidance_scale=body.guidance_scale,
                flow_shift=body.flow_shift,
                extra=body.extra,
            ),
            ROUTE_NAMES,
        )
        return await self.tasks.submit(TaskType.IMG_TO_VIDEO, raw, stored, owner, ROUTE_NAMES)
