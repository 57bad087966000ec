"""POST /v3/async/wan-t2v, /wan-i2v and /hunyuan-video-fast: Novita's fixed-model video routes,
with the field names, ranges and defaults of their documentation pages
(novita.ai/docs/api-reference/model-apis-wan-t2v, -wan-i2v, -hunyuan-video-fast).

Deviations, each a limit of this server: `seed` is at most 2^32 - 1 (the pages say
9999999999), and `loras` (LoRA files by URL) and `enable_safety_checker: true` are refused
where the route validates them, since neither can be honoured."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.constraints import Name, Seed
from schemas.v3.videos import FlowShift, VideoExtra

# Prompts: 1..2000 characters (negative prompts 0..2000), as the pages give them.
_RoutePrompt = Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
_RouteNegativePrompt = Annotated[str, msgspec.Meta(max_length=2000)]
# Wan's 480p and 720p sizes; the height goes with the width (WAN_SIZES).
WanSide = Literal[480, 720, 832, 1280]
WAN_SIZES = {(480, 832), (832, 480), (720, 1280), (1280, 720)}
# Hunyuan Video Fast: the sizes of its page (480p, 540p-ish and 720p, both orientations).
HunyuanSide = Literal[480, 640, 720, 864, 1280]
HUNYUAN_SIZES = {(640, 480), (480, 640), (864, 480), (480, 864), (1280, 720), (720, 1280)}
# The clip length both Wan pages promise ("by default, 5 seconds"): frames at the model's rate.
WAN_SECONDS = 5


class RouteLora(msgspec.Struct, kw_only=True):
    path: str
    scale: float = 1.0


class WanT2VBody(msgspec.Struct, kw_only=True):
    # A catalog model (name or alias) of the Wan family; Novita's is "wan2.1-t2v".
    model_name: Name
    width: WanSide
    height: WanSide
    seed: Seed
    prompt: _RoutePrompt
    negative_prompt: _RouteNegativePrompt | None = None
    loras: Annotated[list[RouteLora], msgspec.Meta(max_length=3)] | None = None
    steps: Annotated[int, msgspec.Meta(ge=1, le=40)] = 30
    guidance_scale: Annotated[float, msgspec.Meta(ge=0, le=10)] = 5.0
    flow_shift: FlowShift = 5.0
    extra: VideoExtra = msgspec.field(default_factory=VideoExtra)


class WanI2VBody(WanT2VBody, kw_only=True):
    # Novita's is "wan2.1-i2v". The image: an http(s) URL (or base64 / a data URL).
    image_url: str
    enable_safety_checker: bool = False
    fast_mode: bool = False


class HunyuanVideoFastBody(msgspec.Struct, kw_only=True):
    # A catalog model (name or alias) of the HunyuanVideo family; Novita's is "hunyuan-video-fast".
    model_name: Name
    width: HunyuanSide
    height: HunyuanSide
    seed: Seed
    steps: Annotated[int, msgspec.Meta(ge=2, le=30)]
    prompt: _RoutePrompt
    # 85..129 on the page; HunyuanVideo makes 4k+1 frames (85, 89, ..., 125: txt2video's limit
    # of 128 frames refuses 129).
    frames: Annotated[int, msgspec.Meta(ge=85, le=129)] = 85
    extra: VideoExtra = msgspec.field(default_factory=VideoExtra)
