"""POST /v3/img2prompt: a prompt that describes an image (Novita's "Image to Prompt")."""

from __future__ import annotations

import msgspec


class Img2PromptBody(msgspec.Struct, kw_only=True):
    # The image, base64 (a data: URL prefix is accepted too); at most 2048x2048 by default
    # (image_tools.img2prompt_max_side).
    image_file: str


class Img2PromptResponse(msgspec.Struct, kw_only=True):
    prompt: str
