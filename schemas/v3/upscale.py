"""POST /v3/async/upscale (seed 003)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from schemas.constraints import Name
from schemas.limits import MAX_SCALE
from schemas.v3.common import CommonExtra


class UpscaleRequest(msgspec.Struct, kw_only=True):
    model_name: Name
    # The image to upscale, at most 2048x2048; a data: URL prefix is accepted too.
    image_base64: str
    # The factor for each side; the output is round(side * scale_factor).
    scale_factor: Annotated[float, msgspec.Meta(gt=1, le=MAX_SCALE)]


class UpscaleBody(msgspec.Struct, kw_only=True):
    request: UpscaleRequest
    extra: CommonExtra = msgspec.field(default_factory=CommonExtra)
