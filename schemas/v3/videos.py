"""POST /v3/async/txt2video and /img2video: flat bodies (no `request` wrapper), as Novita's
documentation and novita-client send them."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.constraints import (
    ClipSkip,
    GuidanceScale,
    Name,
    Prompt,
    PromptText,
    Seed,
    UnitInterval,
    pixel_side,
    refusal,
)
from schemas.limits import (
    MAX_IMG2VIDEO_FRAMES,
    MAX_MOTION_BUCKET_ID,
    MAX_VIDEO_FPS,
    MAX_VIDEO_SIDE,
    MAX_VIDEO_STEPS,
    MIN_MOTION_BUCKET_ID,
    MIN_VIDEO_SIDE,
)
from schemas.v3.common import CommonExtra
from schemas.v3.images import EmbeddingRef, LoraRef

VideoType = Literal["mp4", "gif", "webm"]
VideoSide = Annotated[int, pixel_side(MIN_VIDEO_SIDE, MAX_VIDEO_SIDE)]
VideoSteps = Annotated[int, msgspec.Meta(ge=1, le=MAX_VIDEO_STEPS)]
FlowShift = Annotated[float, msgspec.Meta(ge=1, le=10)]  # Novita's wan-t2v range


class VideoExtra(CommonExtra, kw_only=True):
    response_video_type: VideoType = "mp4"


class VideoPromptSegment(msgspec.Struct, kw_only=True):
    """`frames` consecutive frames generated with `prompt`; segments follow each other."""

    prompt: Prompt
    frames: Annotated[int, msgspec.Meta(ge=1)]


class Txt2VideoBody(msgspec.Struct, kw_only=True):
    # A video model of the catalog, or an SD 1.x checkpoint (animated with the configured
    # AnimateDiff motion adapter, as Novita does).
    model_name: Name
    # At most MAX_TXT2VIDEO_FRAMES frames in all; Wan counts 4k+1 frames, LTX-Video 8k+1, and
    # both take one segment. A segment's refusal names the list (prompts).
    prompts: Annotated[list[VideoPromptSegment], msgspec.Meta(min_length=1, extra=refusal(at_field=True))]
    width: VideoSide = 512
    height: VideoSide = 512
    # Left out: the model's family default (catalog option "steps"; AnimateDiff 20, Wan and
    # LTX-Video 50) and guidance (AnimateDiff 7.5, Wan 5, LTX-Video 3).
    steps: VideoSteps | None = None
    negative_prompt: PromptText | None = None
    guidance_scale: GuidanceScale | None = None
    # -1 or null: the server draws one and reports it in the task result.
    seed: Seed | None = -1
    # A LoRA's refusal names the list (loras), as for an unknown name.
    loras: Annotated[list[LoraRef], msgspec.Meta(extra=refusal(at_field=True))] | None = None
    embeddings: list[EmbeddingRef] | None = None
    # The last frame leads back into the first: the video loops without a cut.
    closed_loop: bool = False
    clip_skip: ClipSkip | None = None
    # Wan and HunyuanVideo: the flow-matching scheduler's shift (more, faster motion); refused
    # for other families. What /v3/async/wan-t2v's flow_shift becomes.
    flow_shift: FlowShift | None = None
    extra: VideoExtra = msgspec.field(default_factory=VideoExtra)


class Img2VideoBody(msgspec.Struct, kw_only=True):
    model_name: Name
    # The image to animate, base64 (a data: URL prefix is accepted too).
    image_file: str
    # Left out: the model's family defaults (SVD 14 frames at 6 a second, Wan 33 at 16,
    # LTX-Video 49 at 24; catalog options "frames" and "fps" override them).
    frames_num: Annotated[int, msgspec.Meta(ge=1, le=MAX_IMG2VIDEO_FRAMES)] | None = None
    frames_per_second: Annotated[int, msgspec.Meta(ge=1, le=MAX_VIDEO_FPS)] | None = None
    # CROP_TO_ASPECT_RATIO: cropped around its centre to the model's aspect ratio and resized to
    # its native size. ORIGINAL_DIMENSION (novita-client's name; ORIGINAL_RESOLUTION too): the
    # video keeps the image's size, rounded down to a multiple of 8.
    image_file_resize_mode: str = "CROP_TO_ASPECT_RATIO"
    steps: VideoSteps | None = None
    seed: Seed | None = -1
    # Stable Video Diffusion's conditioning (127 and 0.02 when left out); refused for other models.
    motion_bucket_id: Annotated[int, msgspec.Meta(ge=MIN_MOTION_BUCKET_ID, le=MAX_MOTION_BUCKET_ID)] | None = None
    cond_aug: UnitInterval | None = None
    # Wan and LTX-Video animate the image as a text describes (an empty prompt if left out);
    # refused for Stable Video Diffusion, which reads no text.
    prompt: PromptText | None = None
    negative_prompt: PromptText | None = None
    guidance_scale: GuidanceScale | None = None
    flow_shift: FlowShift | None = None
    # Blend a frame between each pair (2n - 1 frames at twice the frame rate).
    enable_frame_interpolation: bool = False
    extra: VideoExtra = msgspec.field(default_factory=VideoExtra)
