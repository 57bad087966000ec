"""POST /v3/remove-background, /v3/replace-background and /v3/cleanup: their bodies.

Each answers at once with an `ImageFileResponse` (schemas/v3/image_tools.py), not a task id.
"""

from __future__ import annotations

import msgspec

from schemas.constraints import Prompt
from schemas.v3.image_tools import ImageToolExtra


class RemoveBackgroundBody(msgspec.Struct, kw_only=True):
    # JPEG has no alpha channel: in a JPEG answer the transparent pixels are flattened onto white.
    image_file: str  # base64 (a data: URL too): PNG, JPEG or WebP
    extra: ImageToolExtra = msgspec.field(default_factory=ImageToolExtra)


class ReplaceBackgroundBody(msgspec.Struct, kw_only=True):
    image_file: str
    prompt: Prompt  # the new background
    extra: ImageToolExtra = msgspec.field(default_factory=ImageToolExtra)


class CleanupBody(msgspec.Struct, kw_only=True):
    image_file: str
    # White (bright) pixels mark what to remove, black what to keep; the image's own size.
    mask_file: str
    extra: ImageToolExtra = msgspec.field(default_factory=ImageToolExtra)
