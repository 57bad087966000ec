"""POST /v3/async/txt2img (seed 002 and seed 001's v3 tables)."""

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


class Txt2ImgRequest(msgspec.Struct, kw_only=True):
    model_name: str
    prompt: str
    negative_prompt: str | None = None
    sd_vae: str | None = None
    loras: list[LoraRef] | None = None
    embeddings: list[EmbeddingRef] | None = None
    hires_fix: HiresFix | None = None
    refiner: Refiner | None = None
    width: int = 512
    height: int = 512
    image_num: int = 1
    steps: int = 20
    # -1 or null: the server draws one and reports it in the task result.
    seed: int | None = -1
    clip_skip: int | None = None
    guidance_scale: float = 7.5
    sampler_name: str | None = "Euler a"


class Txt2ImgBody(msgspec.Struct, kw_only=True):
    request: Txt2ImgRequest
    extra: CommonExtra = msgspec.field(default_factory=CommonExtra)
