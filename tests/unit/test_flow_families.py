"""The flow families' rules (engines/image/families.py, engines/image/flow.py) and the defaults the
routes apply (server/capabilities/images/defaults.py), on stand-in engines: nothing is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engines.base import (
    ControlUnit,
    FamilyImageEngine,
    HiresFix,
    ImageGeneration,
    LoraWeight,
    ModelKind,
    ModelSpec,
)
from engines.errors import InvalidJob
from engines.image.families import RULES, FlowFamily, folder_family, spec_family
from engines.image.flow import FlowImageEngine, family_refusal
from schemas.errors import ApiError
from server.capabilities.images.defaults import SD_DEFAULTS, image_settings
from server.routes.v3.flow_routes import qwen_size
from server.routes.v3.image_tasks import V3_IMAGE_NAMES


def job(**fields: Any) -> ImageGeneration:
    base: dict[str, Any] = {"prompt": "a red barn", "width": 64, "height": 64, "steps": 4, "guidance_scale": 3.5}
    return ImageGeneration(**{**base, "seed": 1, **fields})


def engine(family: FlowFamily) -> FlowImageEngine:
    spec = ModelSpec(name="m", kind=ModelKind.IMAGE, engine="diffusers", path="/nowhere", options={"family": family})
    return FlowImageEngine(spec)


class SdStandIn:
    """An SD 1.x engine as the routes see it: no family."""

    spec = ModelSpec(name="sd", kind=ModelKind.IMAGE, engine="diffusers", path="/nowhere")


@pytest.mark.parametrize(
    ("family", "steps", "guidance"),
    [
        (FlowFamily.FLUX_SCHNELL, 4, None),
        (FlowFamily.FLUX_DEV, 28, 3.5),
        (FlowFamily.SD3, 28, 7.0),
        (FlowFamily.SD35, 28, 7.0),
        (FlowFamily.QWEN_IMAGE, 50, 4.0),
    ],
)
def test_each_family_has_its_pipelines_defaults(family: FlowFamily, steps: int, guidance: float | None) -> None:
    found = engine(family)
    assert isinstance(found, FamilyImageEngine)
    assert (found.image_defaults.steps, found.image_defaults.guidance_scale) == (steps, guidance)
    settings = image_settings(found, steps=None, guidance_scale=None, sampler=None, sd_sampler="Euler a")
    assert (settings.steps, settings.sampler, settings.side_multiple) == (steps, None, 16)
    assert settings.guidance_scale == (guidance or 0.0)
    sent = image_settings(found, steps=9, guidance_scale=None, sampler="FlowMatchEuler")
    assert (sent.steps, sent.sampler) == (9, "FlowMatchEuler")


def test_the_sd_engine_keeps_the_routes_defaults() -> None:
    settings = image_settings(SdStandIn(), steps=None, guidance_scale=None, sampler=None, sd_sampler="Euler a")  # type: ignore[arg-type]
    assert settings == (SD_DEFAULTS.steps, SD_DEFAULTS.guidance_scale, "Euler a", 8)
    assert image_settings(SdStandIn(), steps=3, guidance_scale=2.0, sampler="DDIM") == (3, 2.0, "DDIM", 8)  # type: ignore[arg-type]


def test_guidance_sent_to_a_model_without_guidance_is_refused_by_name() -> None:
    with pytest.raises(ApiError) as refused:
        image_settings(
            engine(FlowFamily.FLUX_SCHNELL), steps=None, guidance_scale=3.0, sampler=None, names=V3_IMAGE_NAMES
        )
    assert refused.value.param == "request.guidance_scale"
    dev = image_settings(engine(FlowFamily.FLUX_DEV), steps=None, guidance_scale=2.0, sampler=None)
    assert dev.guidance_scale == 2.0


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"sampler": "Euler a"}, "sampler"),
        ({"clip_skip": 2}, "clip_skip"),
        ({"prompt": "a (red barn:1.3) at noon"}, "prompt"),
        ({"negative_prompt": "(blurry:1.2)"}, "negative_prompt"),
        ({"vae": "v"}, "vae"),
        ({"embeddings": ["e"]}, "embeddings"),
        ({"loras": [LoraWeight(name="l")]}, "loras"),
        ({"controlnets": [ControlUnit(name="c", image=b"")]}, "controlnets"),
        ({"hires_fix": HiresFix(width=128, height=128, strength=0.5)}, "hires_fix"),
        ({"refiner_switch_at": 0.5}, "refiner_switch_at"),
        ({"width": 72}, "width"),
        ({"height": 56}, "height"),
        ({"init_image": b"x", "strength": 0.1}, "strength"),
    ],
)
def test_what_means_nothing_to_a_family_is_refused_by_name(fields: dict[str, Any], field: str) -> None:
    for family in FlowFamily:
        refusal = family_refusal(family, job(**fields))
        assert isinstance(refusal, InvalidJob) and refusal.field == field, family
        with pytest.raises(InvalidJob):
            engine(family).check_job(job(**fields))


def test_what_a_family_honours_passes() -> None:
    for family in FlowFamily:
        assert family_refusal(family, job(sampler="FlowMatchEuler", clip_skip=1, width=1024, height=576)) is None
        # Plain parentheses and a colon are ordinary text, not weighting.
        assert family_refusal(family, job(prompt="a sign (reads: OPEN 24h) at 10:30")) is None


def test_negative_prompt_is_for_the_families_with_true_cfg() -> None:
    for family in FlowFamily:
        refusal = family_refusal(family, job(negative_prompt="blurry"))
        assert (refusal is None) is RULES[family].negative_prompt, family
        if refusal is not None:
            assert refusal.field == "negative_prompt"
    assert not RULES[FlowFamily.FLUX_SCHNELL].negative_prompt and RULES[FlowFamily.QWEN_IMAGE].negative_prompt


def test_only_plain_txt2img_jobs_of_one_setting_share_a_batch() -> None:
    flux = engine(FlowFamily.FLUX_DEV)
    base = flux.batch_key(job())
    assert base is not None
    assert flux.batch_key(job(prompt="other", seed=9, image_num=3)) == base
    for different in (job(width=128), job(steps=5), job(guidance_scale=2.0)):
        assert flux.batch_key(different) not in (None, base)
    assert flux.batch_key(job(init_image=b"x", strength=0.5)) is None
    assert flux.batch_key(job(sampler="Euler a")) is None  # refused jobs never join a batch


def _folder(root: Path, pipeline: str, transformer: dict[str, Any]) -> Path:
    (root / "transformer").mkdir(parents=True)
    (root / "model_index.json").write_text(f'{{"_class_name": "{pipeline}"}}')
    (root / "transformer" / "config.json").write_text(__import__("json").dumps(transformer))
    return root


def test_the_family_comes_from_the_folder_or_the_catalog(tmp_path: Path) -> None:
    dev = _folder(tmp_path / "dev", "FluxPipeline", {"guidance_embeds": True})
    assert folder_family(dev) is FlowFamily.FLUX_DEV
    assert folder_family(_folder(tmp_path / "sd", "StableDiffusionPipeline", {})) is None
    spec = ModelSpec(name="d", kind=ModelKind.IMAGE, path=str(dev))
    assert spec_family(spec) is FlowFamily.FLUX_DEV
    named = ModelSpec(name="d", kind=ModelKind.IMAGE, path=str(dev), options={"family": "flux-schnell"})
    assert spec_family(named) is FlowFamily.FLUX_SCHNELL
    with pytest.raises(ValueError, match="unknown family"):
        spec_family(ModelSpec(name="d", kind=ModelKind.IMAGE, path=str(dev), options={"family": "sd9"}))


@pytest.mark.parametrize(
    ("size", "expected"), [("1024*1024", (1024, 1024)), ("256*1536", (256, 1536)), (" 512*768 ", (512, 768))]
)
def test_qwen_image_sizes_are_width_star_height(size: str, expected: tuple[int, int]) -> None:
    assert qwen_size(size) == expected


@pytest.mark.parametrize("size", ["1024x1024", "1024", "255*512", "512*1537", "*512", "a*b"])
def test_other_qwen_image_sizes_are_refused_naming_size(size: str) -> None:
    with pytest.raises(ApiError) as refused:
        qwen_size(size)
    assert refused.value.param == "size"


def test_schnell_takes_a_guidance_of_zero_and_refuses_any_other() -> None:
    schnell = engine(FlowFamily.FLUX_SCHNELL)
    assert image_settings(schnell, steps=None, guidance_scale=0, sampler=None).guidance_scale == 0.0
    with pytest.raises(ApiError) as refused:
        image_settings(schnell, steps=None, guidance_scale=7.5, sampler=None, names=V3_IMAGE_NAMES)
    assert refused.value.param == "request.guidance_scale"
