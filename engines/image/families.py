"""The flow-matching image families (FLUX.1 schnell and dev, Stable Diffusion 3 / 3.5, Qwen-Image):
which a diffusers folder is, and the rules each family's requests follow.

Read from small JSON files only (model_index.json, transformer/config.json), so the catalog and
the routes know a model's family without loading it. The defaults are the pipelines' own, and
the model cards': FLUX.1 schnell is distilled to 4 steps without guidance, dev embeds a guidance
of 3.5 over 28 steps, SD3 runs 28 steps at CFG 7.0, Qwen-Image 50 steps at a true CFG of 4.0.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Any

import msgspec

from engines.base import ImageDefaults, ModelSpec

# What Novita calls the scheduler every flow family runs (its SD3 guide's only sampler_name).
FLOW_SAMPLER = "FlowMatchEuler"
# The transformers patchify 2x2 latents of a x8 VAE.
FLOW_SIDE_MULTIPLE = 16


class FlowFamily(enum.StrEnum):
    FLUX_SCHNELL = "flux-schnell"
    FLUX_DEV = "flux-dev"
    SD3 = "sd3"
    SD35 = "sd3.5"
    QWEN_IMAGE = "qwen-image"


class FamilyRules(msgspec.Struct, kw_only=True, frozen=True):
    defaults: ImageDefaults
    # Novita's base_model string in /v3/model.
    base_model: str
    # Whether the family has a negative prompt (true CFG); FLUX.1 has none.
    negative_prompt: bool
    # The text-to-image pipeline class (diffusers); img2img and inpainting derive from it.
    pipeline: str


def _defaults(steps: int, guidance: float | None) -> ImageDefaults:
    return ImageDefaults(
        steps=steps, guidance_scale=guidance, side_multiple=FLOW_SIDE_MULTIPLE, own_sampler=FLOW_SAMPLER
    )


RULES: dict[FlowFamily, FamilyRules] = {
    FlowFamily.FLUX_SCHNELL: FamilyRules(
        defaults=_defaults(4, None), base_model="Flux.1 S", negative_prompt=False, pipeline="FluxPipeline"
    ),
    FlowFamily.FLUX_DEV: FamilyRules(
        defaults=_defaults(28, 3.5), base_model="Flux.1 D", negative_prompt=False, pipeline="FluxPipeline"
    ),
    FlowFamily.SD3: FamilyRules(
        defaults=_defaults(28, 7.0), base_model="SD 3", negative_prompt=True, pipeline="StableDiffusion3Pipeline"
    ),
    FlowFamily.SD35: FamilyRules(
        defaults=_defaults(28, 7.0), base_model="SD 3.5", negative_prompt=True, pipeline="StableDiffusion3Pipeline"
    ),
    FlowFamily.QWEN_IMAGE: FamilyRules(
        defaults=_defaults(50, 4.0), base_model="Qwen-Image", negative_prompt=True, pipeline="QwenImagePipeline"
    ),
}
FLOW_PIPELINES = frozenset(rules.pipeline for rules in RULES.values())


def _read(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def folder_family(folder: Path) -> FlowFamily | None:
    """The flow family of a diffusers folder, or None for any other pipeline."""
    name = _read(folder / "model_index.json").get("_class_name")
    transformer = _read(folder / "transformer" / "config.json")
    if name == "FluxPipeline":
        # schnell is guidance-distilled away: its transformer has no guidance embedding.
        return FlowFamily.FLUX_DEV if transformer.get("guidance_embeds") else FlowFamily.FLUX_SCHNELL
    if name == "StableDiffusion3Pipeline":
        # SD 3.5 added query/key RMS norms to the MMDiT; SD3 Medium has none.
        return FlowFamily.SD35 if transformer.get("qk_norm") else FlowFamily.SD3
    if name == "QwenImagePipeline":
        return FlowFamily.QWEN_IMAGE
    return None


def spec_family(spec: ModelSpec) -> FlowFamily | None:
    """The family a catalog entry names (options.family), else the one its folder shows."""
    named = spec.options.get("family")
    if named is not None:
        try:
            return FlowFamily(named)
        except ValueError:
            raise ValueError(f"model {spec.name}: unknown family {named!r}; known: {', '.join(FlowFamily)}") from None
    path = Path(spec.path)
    return folder_family(path) if path.is_dir() else None
