"""Novita's synchronous image tools: bodies and the answer they share.

POST /v3/remove-background, /v3/replace-background and /v3/cleanup answer at once with the
image itself, base64-encoded, instead of a task id.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.constraints import Prompt
from schemas.v3.common import EnterprisePlan

ImageType = Literal["png", "webp", "jpeg"]


class ImageFileAnswer(msgspec.Struct, kw_only=True):
    """The answer of every synchronous /v3 image tool."""

    image_file: str  # the returned image, base64
    image_type: ImageType


class ImageToolExtra(msgspec.Struct, kw_only=True):
    # JPEG has no alpha channel: remove-background's transparent pixels are flattened onto white.
    response_image_type: ImageType = "png"
    # Accepted for compatibility; it changes nothing on a self-hosted server.
    enterprise_plan: EnterprisePlan | None = None


class RemoveBackgroundBody(msgspec.Struct, kw_only=True):
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
