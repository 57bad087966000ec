"""What Novita's synchronous image tools share: the image answer and the `extra` they accept."""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.v3.common import EnterprisePlan

ImageType = Literal["png", "webp", "jpeg"]


class ImageToolExtra(msgspec.Struct, kw_only=True):
    """The ``extra`` object of a synchronous image tool."""

    response_image_type: ImageType = "png"
    # Accepted for compatibility; it changes nothing on a self-hosted server.
    enterprise_plan: EnterprisePlan | None = None


class ImageFileResponse(msgspec.Struct, kw_only=True):
    """An image answered in the body: base64 of the encoded file, and its format."""

    image_file: str
    image_type: ImageType
