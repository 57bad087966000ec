"""POST /v3/reimagine: a variation of an image (Novita's "Reimagine")."""

from __future__ import annotations

import msgspec

from schemas.v3.image_tools import ImageToolExtra


class ReimagineBody(msgspec.Struct, kw_only=True):
    # The image, base64 (a data: URL prefix is accepted too); at most 1024x1024 by default
    # (image_tools.reimagine_max_side).
    image_file: str
    extra: ImageToolExtra = msgspec.field(default_factory=ImageToolExtra)
