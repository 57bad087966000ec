"""What an image request runs with where the client sent nothing: the model family's defaults
(engines/image/families.py) for FLUX.1, SD3 and Qwen-Image, the routes' own for SD 1.x / SDXL.

The wire schemas leave steps, guidance_scale and sampler_name unset when not sent, so that a
family's defaults apply and a value the family has no use for (FLUX.1 schnell's guidance) can be
refused rather than dropped.
"""

from __future__ import annotations

from typing import NamedTuple

from engines.base import FamilyImageEngine, ImageDefaults, ImageEngine
from server.capabilities.calls import SAME_NAMES, WireNames

# SD 1.x / SDXL: what the routes have always defaulted to.
SD_DEFAULTS = ImageDefaults(steps=20, guidance_scale=7.5)


class ImageSettings(NamedTuple):
    steps: int
    guidance_scale: float
    sampler: str | None
    side_multiple: int


def image_defaults(engine: ImageEngine) -> ImageDefaults:
    return engine.image_defaults if isinstance(engine, FamilyImageEngine) else SD_DEFAULTS


def image_settings(
    engine: ImageEngine,
    *,
    steps: int | None,
    guidance_scale: float | None,
    sampler: str | None,
    sd_sampler: str | None = None,
    names: WireNames = SAME_NAMES,
) -> ImageSettings:
    """The job's steps, guidance and sampler: the client's where sent, else the family's.
    ``sd_sampler`` is the route's default sampler for SD 1.x / SDXL checkpoints."""
    defaults = image_defaults(engine)
    # 0 means "no guidance" too: novita-client always sends a guidance_scale, so that is the one
    # value its users can send for such a model.
    if defaults.guidance_scale is None and guidance_scale not in (None, 0):
        raise names.invalid(
            "guidance_scale", f"The model '{engine.spec.name}' takes no guidance; leave guidance_scale unset or 0."
        )
    if defaults.own_sampler is None:  # A1111 samplers choose the scheduler
        sampler = sampler or sd_sampler
    return ImageSettings(
        steps=defaults.steps if steps is None else steps,
        guidance_scale=(defaults.guidance_scale or 0.0) if guidance_scale is None else guidance_scale,
        sampler=sampler or None,
        side_multiple=defaults.side_multiple,
    )
