"""The Stable Diffusion API's ``/api/v3`` routes (seed 004 and its public documentation).

Clients send numbers as strings ("512", "7.5") and switches as "yes"/"no"; the decoder
converts the strings, and switches are read by ``is_yes``.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from schemas.constraints import Name, PromptText, refusal
from schemas.limits import (
    MAX_SDAPI_GUIDANCE,
    MAX_SDAPI_SAMPLES,
    MAX_SDAPI_SIDE,
    MAX_SDAPI_STEPS,
    MIN_SDAPI_GUIDANCE,
    MIN_SDAPI_SIDE,
    SEED_LIMIT,
)

Switch = str | bool | int


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _between(low: float, high: float, name: str) -> msgspec.Meta:
    """The range of a field, refused with the API's own message."""
    message = f"The {name.replace('_', ' ')} must be between {_number(low)} and {_number(high)}."
    return msgspec.Meta(ge=low, le=high, extra=refusal(message=message))


class SdRequest(msgspec.Struct, kw_only=True, frozen=True):
    key: str | None = None
    model_id: Name | None = None
    prompt: PromptText | None = None
    negative_prompt: PromptText | None = None
    # Rounded down to a multiple of 8.
    width: Annotated[int, _between(MIN_SDAPI_SIDE, MAX_SDAPI_SIDE, "width")] = 512
    height: Annotated[int, _between(MIN_SDAPI_SIDE, MAX_SDAPI_SIDE, "height")] = 512
    samples: Annotated[int, _between(1, MAX_SDAPI_SAMPLES, "samples")] = 1
    num_inference_steps: Annotated[int, _between(1, MAX_SDAPI_STEPS, "num_inference_steps")] = 30
    guidance_scale: Annotated[float, _between(MIN_SDAPI_GUIDANCE, MAX_SDAPI_GUIDANCE, "guidance_scale")] = 7.5
    # None: a random seed, reported in meta.
    seed: Annotated[int, _between(0, SEED_LIMIT - 1, "seed")] | None = None
    safety_checker: Switch = "no"
    enhance_prompt: Switch = "no"
    multi_lingual: Switch = "no"
    panorama: Switch = "no"
    self_attention: Switch = "no"
    upscale: Switch = "no"
    webhook: str | None = None
    track_id: str | int | None = None
    # img2img and inpaint: image URLs (or base64 / data URLs).
    init_image: str | None = None
    mask_image: str | None = None
    strength: Annotated[float, _between(0, 1, "strength")] | None = None


class FetchRequest(msgspec.Struct, kw_only=True, frozen=True):
    key: str | None = None


def is_yes(value: Switch) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("yes", "true", "1")
    return bool(value)
