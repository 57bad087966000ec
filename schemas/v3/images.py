"""POST /v3/async/txt2img, /img2img and /inpainting (seed 002, seed 001's v3 tables, and
what novita-client sends)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from schemas.constraints import (
    ClipSkip,
    GuidanceScale,
    ImageSide,
    Name,
    NoFaceRestoration,
    Prompt,
    PromptText,
    Seed,
    Steps,
    UnitInterval,
    refusal,
)
from schemas.limits import MAX_CONTROL_STRENGTH, MAX_CONTROL_UNITS, MAX_IMAGE_NUM
from schemas.v3.common import CommonExtra


class LoraRef(msgspec.Struct, kw_only=True):
    model_name: Name
    strength: UnitInterval = 1.0


class EmbeddingRef(msgspec.Struct, kw_only=True):
    model_name: Name


class HiresFix(msgspec.Struct, kw_only=True):
    # At least the base width and height.
    target_width: ImageSide
    target_height: ImageSide
    # Also leaves steps x strength >= 1.
    strength: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    upscaler: str = "Latent"


class Refiner(msgspec.Struct, kw_only=True):
    switch_at: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.5


class ControlNetUnit(msgspec.Struct, kw_only=True):
    model_name: Name
    image_base64: str
    strength: Annotated[float, msgspec.Meta(ge=0, le=MAX_CONTROL_STRENGTH)] = 1.0
    # novita-client's default; "none" passes the image to the ControlNet as it is.
    preprocessor: Name = "canny"
    # 0 <= guidance_start < guidance_end <= 1 (checked together, naming guidance_start).
    guidance_start: float = 0.0
    guidance_end: float = 1.0


class ControlNet(msgspec.Struct, kw_only=True):
    units: Annotated[list[ControlNetUnit], msgspec.Meta(min_length=1, max_length=MAX_CONTROL_UNITS)]


class ImageTaskRequest(msgspec.Struct, kw_only=True):
    """The fields every image task shares."""

    model_name: Name
    prompt: Prompt
    negative_prompt: PromptText | None = None
    sd_vae: Name | None = None
    # A LoRA's refusal names the list (request.loras), as for an unknown name.
    loras: Annotated[list[LoraRef], msgspec.Meta(extra=refusal(at_field=True))] | None = None
    embeddings: list[EmbeddingRef] | None = None
    image_num: Annotated[int, msgspec.Meta(ge=1, le=MAX_IMAGE_NUM)] = 1
    # Not sent: the model family's default (SD 1.x / SDXL: 20 steps, guidance 7.5, "Euler a";
    # FLUX.1, SD3 and Qwen-Image: their own, see server/capabilities/images/defaults.py).
    steps: Steps | None = None
    # -1 or null: the server draws one and reports it in the task result.
    seed: Seed | None = -1
    clip_skip: ClipSkip | None = None
    guidance_scale: GuidanceScale | None = None
    sampler_name: Name | None = None
    restore_faces: NoFaceRestoration = False


class Txt2ImgRequest(ImageTaskRequest, kw_only=True):
    hires_fix: HiresFix | None = None
    refiner: Refiner | None = None
    width: ImageSide = 512
    height: ImageSide = 512


class Img2ImgRequest(ImageTaskRequest, kw_only=True):
    image_base64: str
    # Output size; null keeps the input image's size (rounded down to a multiple of 8).
    width: ImageSide | None = None
    height: ImageSide | None = None
    strength: UnitInterval = 0.5
    controlnet: ControlNet | None = None
    refiner: Refiner | None = None


class InpaintingRequest(ImageTaskRequest, kw_only=True):
    image_base64: str
    mask_image_base64: str
    strength: UnitInterval = 1.0
    mask_blur: int | None = None
    # novita-client sends these flags as 0/1.
    inpainting_mask_invert: bool | int = False
    # Accepted from A1111-style clients; the diffusers inpainting pipeline has no equivalent.
    inpainting_full_res: bool | int = False
    inpainting_full_res_padding: int = 8
    initial_noise_multiplier: float | None = None


class Txt2ImgBody(msgspec.Struct, kw_only=True):
    request: Txt2ImgRequest
    extra: CommonExtra = msgspec.field(default_factory=CommonExtra)


class Img2ImgBody(msgspec.Struct, kw_only=True):
    request: Img2ImgRequest
    extra: CommonExtra = msgspec.field(default_factory=CommonExtra)


class InpaintingBody(msgspec.Struct, kw_only=True):
    request: InpaintingRequest
    extra: CommonExtra = msgspec.field(default_factory=CommonExtra)
