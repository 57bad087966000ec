"""The captioner and the variation pipeline on the tiny random `demo-captioner` and `demo-reimagine`.

Random weights make the words and pictures meaningless, so the tests check what holds anyway:
the caption is text the model generated (within the catalog's token bounds), the variation has
the input's size, and the same seed gives the same pixels while another seed does not. The
capabilities run them under a real scheduler, as the server does.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import numpy as np
import pytest
from PIL import Image

from engines.admission import AdmissionPolicy
from engines.base import CaptionEngine, ModelKind, ModelSpec, VariationEngine, VariationJob
from engines.image.caption import CaptionerEngine
from engines.image.caption_demo import CAPTION_MODEL
from engines.image.demo import image_demo_catalog
from engines.image.variation import UnclipVariationEngine
from engines.image.variation_demo import VARIATION_MODEL
from engines.registry import ModelRegistry, diffusers_factory, transformers_factory
from engines.scheduler import Scheduler
from engines.vision_demo import VLM_NAME
from server.capabilities.img2prompt import ImagePrompts
from server.capabilities.reimagine import Reimaginer
from server.settings import ImageToolSettings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
async def tools_scheduler(demo_root: Path) -> AsyncIterator[Scheduler]:
    specs = [spec for spec in image_demo_catalog(demo_root) if spec.name in (CAPTION_MODEL, VARIATION_MODEL)]
    registry = ModelRegistry(specs, {"transformers": transformers_factory(), "diffusers": diffusers_factory()})
    scheduler = Scheduler(registry, AdmissionPolicy())
    scheduler.start()
    yield scheduler
    await scheduler.stop()
    await scheduler.unload_all()


@pytest.fixture(scope="session")
async def captioner(tools_scheduler: Scheduler) -> CaptionerEngine:
    engine = tools_scheduler.registry.get(CAPTION_MODEL)
    assert isinstance(engine, CaptionerEngine) and isinstance(engine, CaptionEngine)
    await engine.load()
    return engine


@pytest.fixture(scope="session")
async def variation(tools_scheduler: Scheduler) -> UnclipVariationEngine:
    engine = tools_scheduler.registry.get(VARIATION_MODEL)
    assert isinstance(engine, UnclipVariationEngine) and isinstance(engine, VariationEngine)
    await engine.load()
    return engine


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def test_the_caption_is_text_the_model_generated(captioner: CaptionerEngine) -> None:
    caption = await captioner.caption(noise((64, 48)))
    # The demo entry asks for 8 to 16 new tokens; each decodes to a word of its vocabulary.
    assert 8 <= caption.generated_tokens <= 16
    assert caption.text.strip() and caption.text == caption.text.strip()
    vocabulary = set(captioner._processor.tokenizer.get_vocab())
    assert all(word in vocabulary for word in caption.text.replace(",", " , ").split())
    again = await captioner.caption(noise((64, 48)))
    assert again == caption  # greedy decoding of the same pixels


async def test_a_prompt_starts_the_caption_but_is_not_part_of_it(captioner: CaptionerEngine) -> None:
    options = {**captioner.spec.options, "prompt": "a picture of"}
    prompted = CaptionerEngine(msgspec.structs.replace(captioner.spec, options=options))
    await prompted.load()
    try:
        caption = await prompted.caption(noise((64, 48)))
    finally:
        await prompted.unload()
    assert 8 <= caption.generated_tokens <= 16 and caption.text.strip()
    assert not caption.text.startswith("a picture of")
    # Conditioned on other tokens, the words differ from the unprompted caption's.
    assert caption.text != (await captioner.caption(noise((64, 48)))).text


async def test_an_instruction_captions_with_a_vision_language_models_chat_template(demo_root: Path) -> None:
    # demo-vlm (engines/vision_demo.py, served by vLLM as chat) loads in transformers too.
    vlm = ModelSpec(
        name="vlm-captioner",
        kind=ModelKind.CAPTION,
        engine="transformers",
        path=str(demo_root / VLM_NAME),
        options={"instruction": "Describe this image.", "max_new_tokens": 8, "min_new_tokens": 4},
    )
    engine = transformers_factory()(vlm)
    assert isinstance(engine, CaptionerEngine)
    await engine.load()
    try:
        assert engine._text is not None and "Describe this image." in engine._text and "<image>" in engine._text
        caption = await engine.caption(noise((64, 48)))
    finally:
        await engine.unload()
    # Random weights may decode to special tokens only, so the words are not checked: the tokens are.
    assert 4 <= caption.generated_tokens <= 8
    assert "Describe this image." not in caption.text  # the prompt is not part of the answer


async def test_a_grayscale_or_transparent_image_is_captioned_as_rgb(captioner: CaptionerEngine) -> None:
    for image in (noise((20, 30)).convert("L"), noise((30, 20)).convert("RGBA")):
        assert (await captioner.caption(image)).generated_tokens >= 8


async def test_the_variation_has_the_inputs_size_and_follows_the_seed(variation: UnclipVariationEngine) -> None:
    source = png(noise((45, 30)))  # off the VAE's grid of 8: drawn at 40x24, resized back

    async def run(seed: int) -> np.ndarray:
        image = await variation.vary(VariationJob(image=source, seed=seed))
        assert (image.mode, image.size) == ("RGB", (45, 30))
        return np.asarray(image)

    first, again, other = await run(7), await run(7), await run(8)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    # A tiny input is drawn at one grid cell and still answered at its own size.
    assert (await variation.vary(VariationJob(image=png(noise((3, 5))), seed=1))).size == (3, 5)


async def test_variation_progress_runs_to_one(variation: UnclipVariationEngine) -> None:
    seen: list[float] = []
    await variation.vary(VariationJob(image=png(noise((16, 16))), seed=1), seen.append)
    assert seen == [0.5, 1.0]  # the demo entry runs 2 steps


async def test_a_cancelled_variation_stops(variation: UnclipVariationEngine) -> None:
    seen: list[float] = []
    job = asyncio.create_task(variation.vary(VariationJob(image=png(noise((256, 256))), seed=1), seen.append))
    await asyncio.sleep(0)  # the job is on its worker thread
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert seen != [0.5, 1.0]  # stopped at a step's end, before the last
    # The engine is free again: the next job runs to its end.
    assert (await variation.vary(VariationJob(image=png(noise((16, 16))), seed=1))).size == (16, 16)


async def test_the_capabilities_run_the_demo_models_under_the_scheduler(tools_scheduler: Scheduler) -> None:
    settings = ImageToolSettings()
    prompts, reimaginer = ImagePrompts(tools_scheduler, settings), Reimaginer(tools_scheduler, settings)
    assert (prompts.model, reimaginer.model) == (CAPTION_MODEL, VARIATION_MODEL)
    source = base64.b64encode(png(noise((40, 24), seed=3))).decode()
    prompt = await prompts.describe(source)
    assert prompt.strip()
    answers = [await reimaginer.reimagine(source, "png", seed=seed) for seed in (5, 5, 6)]
    assert answers[0] == answers[1] != answers[2]
    with Image.open(io.BytesIO(base64.b64decode(answers[0]))) as image:
        assert (image.format, image.size) == ("PNG", (40, 24))
    jpeg = await reimaginer.reimagine(source, "jpeg")
    assert Image.open(io.BytesIO(base64.b64decode(jpeg))).format == "JPEG"
