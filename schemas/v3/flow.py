"""Novita's fixed-model routes of the flow families: POST /v3beta/flux-1-schnell (synchronous) and
POST /v3/async/qwen-image-txt2img (a task), as their API reference pages document them."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.v3.tasks import TaskImage

ImageType = Literal["png", "webp", "jpeg"]


class FluxSchnellRequest(msgspec.Struct, kw_only=True):
    """Every field but the image type is required, as on Novita's page."""

    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    seed: Annotated[int, msgspec.Meta(ge=0, le=4294967295)]
    steps: Annotated[int, msgspec.Meta(ge=1, le=100)]
    # Multiples of 16 (FLUX.1's latent patches), checked against the model.
    width: Annotated[int, msgspec.Meta(ge=64, le=2048)]
    height: Annotated[int, msgspec.Meta(ge=64, le=2048)]
    image_num: Annotated[int, msgspec.Meta(ge=1, le=8)]
    # Default png. response_image_format is the name the page's Markdown version gives the same
    # field; response_image_type wins when both are sent.
    response_image_type: ImageType | None = None
    response_image_format: ImageType | None = None


class FlowTask(msgspec.Struct, kw_only=True):
    task_id: str


class FluxSchnellResponse(msgspec.Struct, kw_only=True):
    task: FlowTask
    images: list[TaskImage]


class QwenImageRequest(msgspec.Struct, kw_only=True):
    prompt: Annotated[str, msgspec.Meta(min_length=1)]
    # "width*height", each side 256 to 1536.
    size: str = "1024*1024"
