"""The Stable Diffusion API's ``/api/v3`` routes (seed 004 and its public documentation).

Clients send numbers as strings ("512", "7.5") and switches as "yes"/"no"; the decoder
converts the strings, and switches are read by ``is_yes``.
"""

from __future__ import annotations

import msgspec

Switch = str | bool | int


class SdRequest(msgspec.Struct, kw_only=True):
    key: str | None = None
    model_id: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    width: int = 512
    height: int = 512
    samples: int = 1
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    # None: a random seed, reported in meta.
    seed: int | None = None
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
    strength: float | None = None


class FetchRequest(msgspec.Struct, kw_only=True):
    key: str | None = None


def is_yes(value: Switch) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("yes", "true", "1")
    return bool(value)
