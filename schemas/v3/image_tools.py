"""The answer Novita's synchronous /v3 image tools share: the image itself, base64-encoded."""

from __future__ import annotations

from typing import Literal

import msgspec

ImageType = Literal["png", "webp", "jpeg"]


class ImageFileAnswer(msgspec.Struct, kw_only=True):
    image_file: str  # the returned image, base64
    image_type: ImageType
