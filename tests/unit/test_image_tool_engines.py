"""The captioner's and the variation engine's catalog options, their factories and kind inference,
without loading a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest

from engines.base import CaptionEngine, ModelKind, ModelSpec, VariationEngine, served_kinds
from engines.image.caption import DEFAULT_MAX_NEW_TOKENS, CaptionerEngine, generation_options
from engines.image.caption_demo import CAPTION_MODEL
from engines.image.demo import image_demo_catalog
from engines.image.safety import SafetyClassifierEngine
from engines.image.variation import DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS, UnclipVariationEngine, grid_size
from engines.image.variation_demo import VARIATION_MODEL
from engines.model_files import infer_model
from engines.registry import CatalogError, diffusers_factory, transformers_factory
from schemas.openai.models import ModelKindName
from tests.unit.test_model_files import config, layout


def spec(kind: ModelKind, engine: str, **options: Any) -> ModelSpec:
    return ModelSpec(name="m", kind=kind, engine=engine, path="-", options=options)


def test_captioner_options_default_to_greedy_with_a_token_budget() -> None:
    engine = CaptionerEngine(spec(ModelKind.CAPTION, "transformers"))
    assert engine.generation == {"max_new_tokens": DEFAULT_MAX_NEW_TOKENS, "min_new_tokens": 0, "num_beams": 1}
    chosen = generation_options(spec(ModelKind.CAPTION, "transformers", max_new_tokens=30, num_beams=3))
    assert chosen == {"max_new_tokens": 30, "min_new_tokens": 0, "num_beams": 3}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": "60"}, "max_new_tokens"),
        ({"num_beams": True}, "num_beams"),
        ({"min_new_tokens": -1}, "min_new_tokens"),
        ({"min_new_tokens": 9, "max_new_tokens": 8}, "above"),
        ({"prompt": 3}, "prompt"),
        ({"prompt": "a picture of", "instruction": "Describe it."}, "exclude"),
    ],
)
def test_bad_captioner_options_stop_the_start(options: dict[str, Any], message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        transformers_factory()(spec(ModelKind.CAPTION, "transformers", **options))


def test_variation_options_default_to_the_real_checkpoints() -> None:
    engine = UnclipVariationEngine(spec(ModelKind.VARIATION, "diffusers"))
    settings = engine.settings
    assert (settings.steps, settings.guidance_scale, settings.noise_level, settings.prompt) == (
        DEFAULT_STEPS,
        DEFAULT_GUIDANCE_SCALE,
        0,
        "",
    )


@pytest.mark.parametrize(
    "options",
    [
        {"steps": 0},
        {"steps": 2.5},
        {"guidance_scale": -1},
        {"guidance_scale": "high"},
        {"noise_level": -5},
        {"prompt": 1},
    ],
)
def test_bad_variation_options_stop_the_start(options: dict[str, Any]) -> None:
    with pytest.raises(CatalogError, match=next(iter(options))):
        diffusers_factory()(spec(ModelKind.VARIATION, "diffusers", **options))


def test_the_grid_size_rounds_down_to_the_vae_factor_and_keeps_one_cell() -> None:
    assert grid_size(45, 30, 8) == (40, 24)
    assert grid_size(64, 64, 8) == (64, 64)
    assert grid_size(3, 5, 8) == (8, 8)


def test_the_factories_make_each_kind_its_engine() -> None:
    made = transformers_factory()(spec(ModelKind.CAPTION, "transformers"))
    assert isinstance(made, CaptionerEngine) and isinstance(made, CaptionEngine)
    assert isinstance(transformers_factory()(spec(ModelKind.SAFETY, "transformers")), SafetyClassifierEngine)
    variation = diffusers_factory()(spec(ModelKind.VARIATION, "diffusers"))
    assert isinstance(variation, UnclipVariationEngine) and isinstance(variation, VariationEngine)
    with pytest.raises(CatalogError, match="'safety', 'segmentation', 'caption' only"):
        transformers_factory()(spec(ModelKind.CHAT, "transformers"))
    assert served_kinds(CaptionEngine) == {ModelKind.CAPTION}
    assert served_kinds(VariationEngine) == {ModelKind.VARIATION}


def test_model_cards_document_every_kind() -> None:
    assert set(get_args(ModelKindName)) == {kind.value for kind in ModelKind}


def test_the_demo_catalog_lists_both_tools(tmp_path: Path) -> None:
    specs = {spec.name: spec for spec in image_demo_catalog(tmp_path)}
    assert (specs[CAPTION_MODEL].kind, specs[CAPTION_MODEL].engine) == (ModelKind.CAPTION, "transformers")
    assert (specs[VARIATION_MODEL].kind, specs[VARIATION_MODEL].engine) == (ModelKind.VARIATION, "diffusers")


def test_an_unclip_img2img_pipeline_is_a_variation_model(tmp_path: Path) -> None:
    folder = layout(tmp_path, {"model_index.json": {"_class_name": "StableUnCLIPImg2ImgPipeline"}})
    inferred = infer_model(folder)
    assert (inferred.kind, inferred.engine) == (ModelKind.VARIATION, "diffusers")


@pytest.mark.parametrize(
    "architecture",
    ["BlipForConditionalGeneration", "Blip2ForConditionalGeneration", "GitForCausalLM", "VisionEncoderDecoderModel"],
)
def test_image_captioners_are_caption_models(tmp_path: Path, architecture: str) -> None:
    folder = layout(tmp_path, {"config.json": config(architecture, vision_config={})})
    inferred = infer_model(folder)
    assert (inferred.kind, inferred.engine) == (ModelKind.CAPTION, "transformers")


def test_vision_language_chat_models_stay_chat(tmp_path: Path) -> None:
    folder = layout(tmp_path, {"config.json": config("Idefics3ForConditionalGeneration", vision_config={})})
    assert infer_model(folder).kind is ModelKind.CHAT
