"""The transformers segmentation engine on the tiny random demo SegFormer (`demo-segmenter`), a
tiny custom-code matting model built here, and the image tools on them with the demo SD model.

Random weights make the demo's masks meaningless as outlines; the tests check what the engine
promises regardless: an "L" mask of the image's own size, the same for the same pixels, refusals
of catalog mistakes. The custom-code model has one chosen weight (foreground = red), so its path
is checked for what the mask says, not only for its shape.
"""

from __future__ import annotations

import io
import json
import secrets
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from engines.admission import AdmissionPolicy
from engines.base import ModelKind, ModelSpec, SegmentationEngine
from engines.image.demo import build_image_demo_models
from engines.image.segmentation import TransformersSegmentationEngine
from engines.image.segmentation_demo import SEGMENTATION_MODEL
from engines.registry import CatalogError, ModelRegistry, diffusers_factory, transformers_factory
from engines.scheduler import Scheduler
from server.capabilities.image_editor import ImageEditor
from server.capabilities.images.generation import ImageGenerator
from server.capabilities.images.safety import NsfwDetector
from server.settings import ImageToolSettings
from server.storage.local import LocalStorage

pytestmark = pytest.mark.integration

RED, BLUE = (230, 10, 10), (10, 10, 230)


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelSpec]:
    return {spec.name: spec for spec in build_image_demo_models(tmp_path_factory.mktemp("image-demo"))}


@pytest.fixture(scope="module")
async def segmenter(specs: dict[str, ModelSpec]) -> AsyncIterator[TransformersSegmentationEngine]:
    engine = TransformersSegmentationEngine(specs[SEGMENTATION_MODEL])
    await engine.load()
    yield engine
    await engine.unload()


def half_red(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    image = Image.new("RGB", size, BLUE)
    image.paste(RED, (0, 0, size[0] // 2, size[1]))
    return image.convert(mode)


async def test_the_mask_is_an_alpha_channel_of_the_image_size(segmenter: TransformersSegmentationEngine) -> None:
    assert isinstance(segmenter, SegmentationEngine) and segmenter.memory_bytes() > 0
    for size, mode in (((97, 61), "RGB"), ((64, 64), "RGBA"), ((13, 200), "L"), ((300, 17), "P")):
        mask = await segmenter.segment(half_red(size, mode))
        assert (mask.mode, mask.size) == ("L", size), (size, mode)
    first = await segmenter.segment(half_red((80, 40)))
    again = await segmenter.segment(half_red((80, 40)))
    assert first.tobytes() == again.tobytes()  # the same pixels give the same mask


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"foreground_labels": ["person"]}, "foreground_labels names \\['person'\\]"),
        ({"foreground_labels": "foreground"}, "must be a non-empty list"),
        ({"trust_remote_code": "yes"}, "trust_remote_code must be true or false"),
        ({"mean": [0.5, 0.5]}, "mean must be three numbers"),
    ],
)
async def test_catalog_mistakes_are_refused(
    specs: dict[str, ModelSpec], options: dict[str, object], problem: str
) -> None:
    spec = ModelSpec(
        name="seg",
        kind=ModelKind.SEGMENTATION,
        engine="transformers",
        path=specs[SEGMENTATION_MODEL].path,
        options=options,
    )
    with pytest.raises(CatalogError, match=problem):
        engine = TransformersSegmentationEngine(spec)
        await engine.load()


async def test_a_folder_of_another_model_type_is_refused_with_a_hint(specs: dict[str, ModelSpec]) -> None:
    # The demo NSFW classifier: a ViT with a classification head, no semantic-segmentation class.
    spec = ModelSpec(name="seg", kind=ModelKind.SEGMENTATION, engine="transformers", path=specs["demo-nsfw"].path)
    with pytest.raises(CatalogError, match="not a semantic-segmentation model"):
        await TransformersSegmentationEngine(spec).load()


def test_the_transformers_engine_refuses_a_kind_it_does_not_serve(specs: dict[str, ModelSpec]) -> None:
    factory = transformers_factory()
    assert isinstance(factory(specs[SEGMENTATION_MODEL]), TransformersSegmentationEngine)
    wrong = ModelSpec(name="x", kind=ModelKind.IMAGE, engine="transformers", path="-")
    with pytest.raises(CatalogError, match="serves kinds 'safety', 'segmentation', 'caption' only"):
        factory(wrong)


# -- a model that ships its own code (as briaai/RMBG-1.4 and ZhengPeng7/BiRefNet do) -------------

_MATTING_CODE = textwrap.dedent(
    """
    import torch
    from transformers import PretrainedConfig, PreTrainedModel


    class TinyMattingConfig(PretrainedConfig):
        model_type = "tiny_matting"


    class TinyMattingModel(PreTrainedModel):
        config_class = TinyMattingConfig

        def __init__(self, config):
            super().__init__(config)
            self.conv = torch.nn.Conv2d(3, 1, 1)
            self.post_init()

        def forward(self, pixel_values):
            logits = self.conv(pixel_values)
            # Side outputs first, the finest map last, as BiRefNet answers.
            return [torch.zeros_like(logits), logits]
    """
)


def _build_matting_model(out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    out.mkdir()
    (out / "tiny_matting.py").write_text(_MATTING_CODE)
    auto_map = {
        "AutoConfig": "tiny_matting.TinyMattingConfig",
        "AutoModelForImageSegmentation": "tiny_matting.TinyMattingModel",
    }
    config = {"model_type": "tiny_matting", "architectures": ["TinyMattingModel"], "auto_map": auto_map}
    (out / "config.json").write_text(json.dumps(config))
    # Logit 20 x (red - 0.5): after the sigmoid, ~1 on red pixels and ~0 on blue ones.
    weights = {"conv.weight": torch.tensor([[[[20.0]], [[0.0]], [[0.0]]]]), "conv.bias": torch.zeros(1)}
    save_file(weights, str(out / "model.safetensors"))


async def test_a_custom_code_model_runs_only_when_trusted(tmp_path: Path) -> None:
    _build_matting_model(tmp_path / "matting")
    options = {"trust_remote_code": True, "input_size": [32, 32], "mean": [0.5, 0.5, 0.5], "std": [1, 1, 1]}
    spec = ModelSpec(
        name="matting",
        kind=ModelKind.SEGMENTATION,
        engine="transformers",
        path=str(tmp_path / "matting"),
        options=options,
    )
    engine = TransformersSegmentationEngine(spec)
    await engine.load()
    mask = await engine.segment(half_red((60, 40)))
    assert (mask.mode, mask.size) == ("L", (60, 40))
    assert mask.getpixel((5, 20)) > 250 and mask.getpixel((55, 20)) < 5  # red is the foreground
    await engine.unload()

    untrusted = ModelSpec(name="matting", kind=ModelKind.SEGMENTATION, engine="transformers", path=spec.path)
    with pytest.raises(CatalogError, match=r"options\.trust_remote_code = true"):
        await TransformersSegmentationEngine(untrusted).load()


# -- the image tools on the real models -----------------------------------------------------------


@pytest.fixture(scope="module")
async def tools(specs: dict[str, ModelSpec], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ImageEditor]:
    served = [specs[SEGMENTATION_MODEL], specs["demo-sd"]]
    registry = ModelRegistry(served, {"transformers": transformers_factory(), "diffusers": diffusers_factory()})
    scheduler = Scheduler(registry, AdmissionPolicy())
    scheduler.start()
    storage = LocalStorage(tmp_path_factory.mktemp("outputs"), secrets.token_bytes(32))
    images = ImageGenerator(scheduler, storage, NsfwDetector(scheduler, ""))
    # Few steps: random weights paint no better with more.
    yield ImageEditor(scheduler, images, ImageToolSettings(inpaint_steps=2))
    await scheduler.stop()
    await scheduler.unload_all()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def test_remove_background_answers_the_mask_as_alpha(tools: ImageEditor) -> None:
    assert (tools.segmentation_model, tools.inpainting_model) == (SEGMENTATION_MODEL, "demo-sd")
    source = half_red((72, 40))
    for image_type, expected_mode in (("png", "RGBA"), ("webp", "RGBA"), ("jpeg", "RGB")):
        data = await tools.remove_background(_png(source), image_type)
        with Image.open(io.BytesIO(data)) as answer:
            assert (answer.format.lower(), answer.mode, answer.size) == (image_type, expected_mode, (72, 40))
    with Image.open(io.BytesIO(await tools.remove_background(_png(source), "png"))) as answer:
        segmenter = tools.scheduler.engine(SEGMENTATION_MODEL, SegmentationEngine)
        async with tools.scheduler.lease(SEGMENTATION_MODEL, SegmentationEngine):
            mask = await segmenter.segment(source)
        assert answer.getchannel("A").tobytes() == mask.tobytes()  # the alpha is the model's mask
        assert answer.convert("RGB").tobytes() == source.tobytes()  # the colours are the input's


async def test_replace_background_and_cleanup_keep_the_input_size(tools: ImageEditor) -> None:
    source = half_red((90, 50))
    replaced = await tools.replace_background(_png(source), "a quiet beach", "png")
    with Image.open(io.BytesIO(replaced)) as answer:
        assert (answer.mode, answer.size) == ("RGB", (90, 50))
    mask = Image.new("L", (90, 50), 0)
    mask.paste(255, (30, 10, 60, 40))
    cleaned = await tools.cleanup(_png(source), _png(mask), "png")
    with Image.open(io.BytesIO(cleaned)) as answer:
        assert (answer.mode, answer.size) == ("RGB", (90, 50))
        assert answer.getpixel((5, 5)) == RED and answer.getpixel((85, 45)) == BLUE  # outside the mask
        assert answer.crop((30, 10, 60, 40)).tobytes() != source.crop((30, 10, 60, 40)).tobytes()
