"""Novassium (Proxyle) ``POST /api/novassium/v1/generate`` (seed 000)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from schemas.constraints import PromptText, refusal
from schemas.errors import ErrorCode
from schemas.limits import MAX_NOVASSIUM_SAMPLES, MAX_NOVASSIUM_SEED, MAX_NOVASSIUM_SIDE, MIN_NOVASSIUM_SIDE

# The API's own messages for its ranges. Either side out of range is reported as width.
_SIDE = msgspec.Meta(
    ge=MIN_NOVASSIUM_SIDE,
    le=MAX_NOVASSIUM_SIDE,
    extra=refusal(
        ErrorCode.INVALID_IMAGE_SIZE, message="Image dimensions must be between 64 and 16,384 pixels.", param="width"
    ),
)


class GenerateRequest(msgspec.Struct, kw_only=True, frozen=True):
    # Every field is optional here so that a missing one gets the API's own message
    # ("Prompt is required.") rather than a generic decoding error.
    prompt: PromptText | None = None
    style_preset: str | None = None
    aspect_ratio: str | None = None
    samples: (
        Annotated[
            int,
            msgspec.Meta(
                ge=1,
                le=MAX_NOVASSIUM_SAMPLES,
                extra=refusal(message=f"Samples must be between 1 and {MAX_NOVASSIUM_SAMPLES}."),
            ),
        ]
        | None
    ) = None
    negative_prompt: PromptText | None = None
    seed: (
        Annotated[
            int,
            msgspec.Meta(
                ge=0, le=MAX_NOVASSIUM_SEED, extra=refusal(message=f"Seed must be between 0 and {MAX_NOVASSIUM_SEED}.")
            ),
        ]
        | None
    ) = None
    output_format: str | None = None
    # 1024 when not given; width x height must reach MIN_NOVASSIUM_PIXELS.
    width: Annotated[int, _SIDE] | None = None
    height: Annotated[int, _SIDE] | None = None


class GenerateResponse(msgspec.Struct, kw_only=True):
    success: bool
    images: list[str]
    # None for a key without a balance (unmetered) and on an open server.
    remaining_credits: int | float | None


class ErrorResponse(msgspec.Struct, kw_only=True):
    success: bool
    message: str
    # The error code of the API's table (missing_parameters, invalid_api_key, ...).
    code: str
