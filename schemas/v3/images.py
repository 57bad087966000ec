"""POST /v3/async/txt2img, /img2img and /inpainting (seed 002, seed 001's v3 tables, and
what novita-client sends)."""

from __future__ import annotations

import msgspec

from schemas.v3.common import CommonExtra


class LoraRef(msgspec.Struct, kw_only=True):
    model_name: str
    strength: float = 1.0


class EmbeddingRef(msgspec.Struct, kw_only=True):
    model_name: str


class HiresFix(msgspec.Struct, kw_only=True):
    target_width: int
    target_height: int
    strength: float = 0.5
    upscaler: str = "Latent"


class Refiner(msgspec.Struct, kw_only=True):
    switch_at: float = 0.5


class ControlNetUnit(msgspec.Struct, kw_only=True):
    model_name: str
    image_base64: str
    strength: float = 1.0
    # novita-client's default; "none" passes the image to the ControlNet as it is.
    preprocessor: str = "canny"
    guidance_start: float = 0.0
    guidance_end: float = 1.0


class ControlNet(msgspec.Struct, kw_only=True):
    units: list[ControlNetUnit] = []


class ImageTaskRequest(msgspec.Struct, kw_only=True):
    """The fields every image task shares."""

    model_name: str
    prompt: str
    negative_prompt: str | None = None
    sd_vae: str | None = None
    loras: list[LoraRef] | None = None
    embeddings: list[EmbeddingRef] | None = None
    image_num: int = 1
    steps: int = 20
    # -1 or null: the server draws one and reports it in the task result.
    seed: int | None = -1
    clip_skip: int | None = None
    guidance_scale: float = 7.5
    sampler_name: str | None = "Euler a"


class Txt2ImgRequest(ImageTaskRequest, kw_only=True):
    hires_fix: HiresFix | None = None
    refiner: Refiner | None = None
    width: int = 512
    height: int = 512


class Img2ImgRequest(ImageTaskRequest, kw_only=True):
    image_base64: str
    # Output size; null keeps the input image's size (rounded down to a multiple of 8).
    width: int | None = None
    height: int | None = None
    strength: float = 0.5
    controlnet: ControlNet | None = None


class InpaintingRequest(ImageTaskRequest, kw_only=True):
    image_base64: str
    mask_image_base64: str
    strength: float = 1.0
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
