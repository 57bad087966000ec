"""POST /v3/async/txt2video and /img2video: flat bodies (no `request` wrapper), as Novita's
documentation and novita-client send them."""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.v3.common import CommonExtra
from schemas.v3.images import EmbeddingRef, LoraRef

VideoType = Literal["mp4", "gif", "webm"]


class VideoExtra(CommonExtra, kw_only=True):
    response_video_type: VideoType = "mp4"


class VideoPromptSegment(msgspec.Struct, kw_only=True):
    """`frames` consecutive frames generated with `prompt`; segments follow each other."""

    prompt: str
    frames: int


class Txt2VideoBody(msgspec.Struct, kw_only=True):
    model_name: str
    prompts: list[VideoPromptSegment]
    width: int = 512
    height: int = 512
    steps: int = 20
    negative_prompt: str | None = None
    guidance_scale: float = 7.5
    # -1 or null: the server draws one and reports it in the task result.
    seed: int | None = -1
    loras: list[LoraRef] | None = None
    embeddings: list[EmbeddingRef] | None = None
    # The last frame leads back into the first: the video loops without a cut.
    closed_loop: bool = False
    clip_skip: int | None = None
    extra: VideoExtra = msgspec.field(default_factory=VideoExtra)


class Img2VideoBody(msgspec.Struct, kw_only=True):
    model_name: str
    # The image to animate, base64 (a data: URL prefix is accepted too).
    image_file: str
    frames_num: int = 14
    frames_per_second: int = 6
    # CROP_TO_ASPECT_RATIO: cropped around its centre to the model's aspect ratio and resized to
    # its native size. ORIGINAL_DIMENSION (novita-client's name; ORIGINAL_RESOLUTION too): the
    # video keeps the image's size, rounded down to a multiple of 8.
    image_file_resize_mode: str = "CROP_TO_ASPECT_RATIO"
    steps: int = 20
    seed: int | None = -1
    motion_bucket_id: int = 127
    cond_aug: float = 0.02
    # Blend a frame between each pair (2n - 1 frames at twice the frame rate).
    enable_frame_interpolation: bool = False
    extra: VideoExtra = msgspec.field(default_factory=VideoExtra)
