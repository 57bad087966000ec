"""The diffusers image engine on the tiny random SD 1.x and SDXL demo models (64x64, 2 steps).

Random weights make pictures meaningless, but every job is deterministic, so the tests compare
pixels: equal where the engine promises equality, different where an input must have an effect.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from PIL import Image

from engines.base import ControlUnit, HiresFix, ImageEngine, ImageGeneration, ImageResult, LoraWeight, ModelSpec
from engines.errors import InvalidJob, JobProblem
from engines.image import pipelines
from engines.image.demo import CONTROLNET_NAME, EMBEDDING_NAME, LORA_NAME, VAE_NAME, build_image_demo_models
from engines.image.pipelines import DiffusersImageEngine, parse_emphasis
from engines.image.samplers import SAMPLERS

pytestmark = pytest.mark.integration

# Over 77 tokens: the demo vocabulary has one token per character.
LONG_PROMPT = "a watercolour painting of a lighthouse on a cliff above a stormy sea, " * 3


@pytest.fixture(scope="session")
def image_specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelSpec]:
    root: Path = tmp_path_factory.mktemp("image-demo")
    return {spec.name: spec for spec in build_image_demo_models(root)}


async def _loaded(spec: ModelSpec) -> DiffusersImageEngine:
    engine = DiffusersImageEngine(spec)
    await engine.load()
    return engine


@pytest.fixture(scope="session")
async def sd(image_specs: dict[str, ModelSpec]) -> AsyncIterator[DiffusersImageEngine]:
    engine = await _loaded(image_specs["demo-sd"])
    yield engine
    await engine.unload()


@pytest.fixture(scope="session")
async def sdxl(image_specs: dict[str, ModelSpec]) -> AsyncIterator[DiffusersImageEngine]:
    engine = await _loaded(image_specs["demo-sdxl"])
    yield engine
    await engine.unload()


def job(**fields: Any) -> ImageGeneration:
    defaults = {"prompt": "a red fox in the snow", "width": 64, "height": 64, "steps": 2, "guidance_scale": 7.0}
    return ImageGeneration(**{**defaults, "seed": 42, **fields})


def pixels(result: ImageResult, index: int = 0) -> np.ndarray:
    return np.asarray(result.images[index].convert("RGB"), dtype=np.int16)


def png(size: tuple[int, int], channels: int = 3) -> bytes:
    """A gradient PNG: RGB with 3 channels, greyscale (a mask) with 1."""
    gradient = np.linspace(0, 255, size[0] * size[1] * channels).astype(np.uint8).reshape(size[1], size[0], channels)
    buffer = io.BytesIO()
    Image.fromarray(gradient.squeeze(-1) if channels == 1 else gradient).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_engine_meets_the_protocol_and_reports_memory(sd: DiffusersImageEngine) -> None:
    assert isinstance(sd, ImageEngine)
    assert await sd.health()
    assert 1_000_000 < sd.memory_bytes() < 10_000_000  # the tiny model's float32 weights


async def test_same_seed_same_pixels_other_seed_differs(sd: DiffusersImageEngine) -> None:
    first, again, other = [await sd.generate(job(seed=seed)) for seed in (7, 7, 8)]
    assert first.seed == 7 and first.images[0].size == (64, 64)
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))


async def test_image_num_draws_one_seed_per_image(sd: DiffusersImageEngine) -> None:
    batch = await sd.generate(job(seed=3, image_num=2))
    single = await sd.generate(job(seed=4))
    assert len(batch.images) == 2 and batch.seed == 3
    assert not np.array_equal(pixels(batch, 0), pixels(batch, 1))
    # Image 1 starts from seed 4's noise; batched arithmetic may differ in the last bits only.
    assert np.abs(pixels(batch, 1) - pixels(single)).max() <= 2


@pytest.mark.parametrize("sampler", list(SAMPLERS))
async def test_every_sampler_runs_and_is_deterministic(sd: DiffusersImageEngine, sampler: str) -> None:
    first = await sd.generate(job(sampler=sampler))
    second = await sd.generate(job(sampler=sampler))
    assert first.images[0].size == (64, 64)
    assert np.array_equal(pixels(first), pixels(second)), sampler  # SDE samplers included


async def test_lora_strength_zero_is_the_base_model_and_one_changes_it(sd: DiffusersImageEngine) -> None:
    base = pixels(await sd.generate(job()))
    zero = pixels(await sd.generate(job(loras=[LoraWeight(name=LORA_NAME, strength=0.0)])))
    full = pixels(await sd.generate(job(loras=[LoraWeight(name=LORA_NAME, strength=1.0)])))
    after = pixels(await sd.generate(job()))  # adapters switched off again for a job without LoRAs
    assert np.array_equal(base, zero)
    assert not np.array_equal(base, full)
    assert np.array_equal(base, after)


async def test_textual_inversion_token_is_read_as_the_embedding(image_specs: dict[str, ModelSpec]) -> None:
    engine = await _loaded(image_specs["demo-sd"])  # its own instance: the token is added for good
    try:
        prompt = f"a {EMBEDDING_NAME} in the snow"
        as_text = pixels(await engine.generate(job(prompt=prompt)))
        with_embedding = await engine.generate(job(prompt=prompt, embeddings=[EMBEDDING_NAME]))
        assert not np.array_equal(as_text, pixels(with_embedding))
        tokenizer = engine._pipe.tokenizer
        ids = tokenizer(EMBEDDING_NAME, add_special_tokens=False).input_ids
        assert ids == tokenizer.convert_tokens_to_ids([EMBEDDING_NAME])  # one added token, not characters
    finally:
        await engine.unload()


async def test_img2img_and_inpainting_return_the_requested_size(sd: DiffusersImageEngine) -> None:
    init = png((50, 40))
    img2img = await sd.generate(job(width=64, height=96, init_image=init, strength=0.6, steps=4))
    assert [image.size for image in img2img.images] == [(64, 96)]
    again = await sd.generate(job(width=64, height=96, init_image=init, strength=0.6, steps=4))
    assert np.array_equal(pixels(img2img), pixels(again))
    inpaint = await sd.generate(job(width=96, height=64, init_image=init, mask_image=png((30, 30), channels=1)))
    assert [image.size for image in inpaint.images] == [(96, 64)]


async def test_sdxl_runs_with_weighted_and_long_prompts(sdxl: DiffusersImageEngine) -> None:
    plain = await sdxl.generate(job())
    assert plain.images[0].size == (64, 64)
    assert np.array_equal(pixels(plain), pixels(await sdxl.generate(job())))
    weighted = await sdxl.generate(job(prompt="a (red:1.4) fox in the [snow]", negative_prompt="blurry"))
    assert not np.array_equal(pixels(plain), pixels(weighted))
    assert (await sdxl.generate(job(prompt=LONG_PROMPT, clip_skip=2))).images[0].size == (64, 64)


async def test_long_prompt_is_not_truncated(sd: DiffusersImageEngine) -> None:
    tokenizer = sd._pipe.tokenizer
    window = tokenizer.model_max_length - 2  # what a truncating encoder keeps, besides start and end
    # The demo vocabulary has one token per character: 15 five-letter words fill the window exactly,
    # so `head` is what a truncating encoder would read of `head + tail`.
    head = " ".join(["storm"] * (window // 5))
    assert len(tokenizer(head, add_special_tokens=False).input_ids) == window
    full, cut = [pixels(await sd.generate(job(prompt=p))) for p in (head + " lighthouse on a cliff", head)]
    assert not np.array_equal(full, cut)


async def test_weighted_prompt_and_clip_skip_change_the_conditioning(sd: DiffusersImageEngine) -> None:
    plain = pixels(await sd.generate(job(prompt="a red fox")))
    weighted = pixels(await sd.generate(job(prompt="a (red:1.5) fox")))
    neutral = pixels(await sd.generate(job(prompt="a (red:1.0) fox")))
    skipped = pixels(await sd.generate(job(prompt="a red fox", clip_skip=2)))
    assert not np.array_equal(plain, weighted)
    assert np.array_equal(plain, neutral)  # weight 1 is the plain prompt
    assert not np.array_equal(plain, skipped)


async def test_without_compel_long_prompts_are_refused_not_truncated(
    sd: DiffusersImageEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipelines, "_compel_provider", lambda: None)
    assert (await sd.generate(job(negative_prompt="blurry"))).images[0].size == (64, 64)
    with pytest.raises(InvalidJob) as caught:
        await sd.generate(job(prompt="storm " * 20))
    assert caught.value.field == "prompt" and caught.value.problem is JobProblem.INVALID


def test_a1111_emphasis_parsing() -> None:
    assert parse_emphasis("a (red:1.5) fox") == [("a ", 1.0), ("red", 1.5), (" fox", 1.0)]
    assert parse_emphasis("((big)) [small] \\(literal\\)") == [
        ("big ", pytest.approx(1.21)),
        ("small ", pytest.approx(1 / 1.1)),
        ("(literal)", 1.0),
    ]
    assert parse_emphasis("(open") == [("open", pytest.approx(1.1))]
    assert parse_emphasis("") == [("", 1.0)]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"sampler": "Euler z"}, "sampler"),
        ({"loras": [LoraWeight(name="no-such-lora")]}, "loras"),
        ({"embeddings": ["no-such-embedding"]}, "embeddings"),
        ({"width": 60}, "width"),
        ({"clip_skip": 9}, "clip_skip"),
        ({"mask_image": b"not used"}, "init_image"),
        ({"init_image": b"not an image"}, "init_image"),
        ({"vae": "no-such-vae"}, "vae"),
        ({"hires_fix": HiresFix(width=128, height=128, strength=0.5, upscaler="Nope")}, "hires_fix"),
        ({"hires_fix": HiresFix(width=32, height=64, strength=0.5)}, "hires_fix"),
        ({"hires_fix": HiresFix(width=128, height=128, strength=0.5), "init_image": b"x"}, "hires_fix"),
        ({"refiner_switch_at": 0.5}, "refiner_switch_at"),  # demo-sd has no refiner
        ({"controlnets": [ControlUnit(name=CONTROLNET_NAME, image=b"x")]}, "controlnets"),  # txt2img
        ({"controlnets": [ControlUnit(name="nope", image=b"x")], "init_image": b"x", "strength": 0.5}, "controlnets"),
    ],
)
async def test_bad_jobs_name_the_field(sd: DiffusersImageEngine, fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidJob) as caught:
        await sd.generate(job(**fields))
    assert caught.value.field == field
    assert caught.value.problem is JobProblem.INVALID


async def test_progress_rises_to_one(sd: DiffusersImageEngine) -> None:
    fractions: list[float] = []
    await sd.generate(job(steps=4, sampler="Euler"), fractions.append)
    assert fractions == sorted(fractions) and len(set(fractions)) == len(fractions) == 4
    assert fractions[0] > 0 and fractions[-1] == 1.0


async def test_cancelled_job_stops_and_frees_the_device(sd: DiffusersImageEngine) -> None:
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    fractions: list[float] = []

    def progress(fraction: float) -> None:  # called on the worker thread
        fractions.append(fraction)
        loop.call_soon_threadsafe(started.set)

    task = asyncio.create_task(sd.generate(job(steps=200, sampler="Euler"), progress))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The cancellation returned once the worker thread had stopped: no step runs after it.
    steps = len(fractions)
    await asyncio.sleep(0.2)
    assert len(fractions) == steps
    after = await asyncio.wait_for(sd.generate(job()), timeout=20)
    assert after.images and fractions[-1] < 1.0


@pytest.mark.parametrize("upscaler", ["Latent", "RealESRNet_x4plus"])
async def test_hires_fix_gives_the_target_size_deterministically(sd: DiffusersImageEngine, upscaler: str) -> None:
    fractions: list[float] = []
    hires = HiresFix(width=128, height=96, strength=0.5, upscaler=upscaler)
    first = await sd.generate(job(hires_fix=hires, image_num=2), fractions.append)
    again = await sd.generate(job(hires_fix=hires, image_num=2))
    assert [image.size for image in first.images] == [(128, 96)] * 2
    assert np.array_equal(pixels(first), pixels(again)) and np.array_equal(pixels(first, 1), pixels(again, 1))
    assert fractions == sorted(fractions) and fractions[-1] == 1.0  # one progress over both passes
    # The second pass adds its own denoising: not just the base image resized.
    base = (await sd.generate(job())).images[0].resize((128, 96), Image.Resampling.LANCZOS)
    assert not np.array_equal(pixels(first), np.asarray(base, dtype=np.int16))


async def test_the_latent_and_image_upscalers_differ(sd: DiffusersImageEngine) -> None:
    latent, image = [
        pixels(await sd.generate(job(hires_fix=HiresFix(width=128, height=128, strength=0.5, upscaler=name))))
        for name in ("Latent", "RealESRGAN_x4plus_anime_6B")
    ]
    assert not np.array_equal(latent, image)


async def test_refiner_takes_over_at_switch_at(sdxl: DiffusersImageEngine) -> None:
    base_only = pixels(await sdxl.generate(job(steps=4)))
    refined = await sdxl.generate(job(steps=4, refiner_switch_at=0.5))
    assert refined.images[0].size == (64, 64)
    assert np.array_equal(pixels(refined), pixels(await sdxl.generate(job(steps=4, refiner_switch_at=0.5))))
    assert not np.array_equal(base_only, pixels(refined))
    later = pixels(await sdxl.generate(job(steps=4, refiner_switch_at=0.75)))
    assert not np.array_equal(later, pixels(refined))
    # With a hires fix after it, and several images: the passes chain.
    chained = await sdxl.generate(
        job(steps=4, refiner_switch_at=0.5, image_num=2, hires_fix=HiresFix(width=96, height=96, strength=0.5))
    )
    assert [image.size for image in chained.images] == [(96, 96)] * 2
    assert np.array_equal(base_only, pixels(await sdxl.generate(job(steps=4))))  # base-only is unchanged


async def test_hires_fix_through_the_esrgan_network_the_catalog_names(image_specs: dict[str, ModelSpec]) -> None:
    # demo-sd maps RealESRGAN_x4plus_anime_6B to demo-esrgan; without the mapping the name resizes with Lanczos.
    spec = image_specs["demo-sd"]
    assert "RealESRGAN_x4plus_anime_6B" in spec.options["upscalers"]
    hires = HiresFix(width=128, height=128, strength=0.5, upscaler="RealESRGAN_x4plus_anime_6B")
    options = {key: value for key, value in spec.options.items() if key != "upscalers"}
    with_net, lanczos_only = await _loaded(spec), await _loaded(msgspec.structs.replace(spec, options=options))
    try:
        before = with_net.memory_bytes()
        fractions: list[float] = []
        through_net = await with_net.generate(job(hires_fix=hires), fractions.append)
        assert through_net.images[0].size == (128, 128) and fractions[-1] == 1.0
        assert with_net.memory_bytes() > before  # the network stays loaded for the next hires fix
        assert np.array_equal(pixels(through_net), pixels(await with_net.generate(job(hires_fix=hires))))
        resized = await lanczos_only.generate(job(hires_fix=hires))
    finally:
        await with_net.unload()
        await lanczos_only.unload()
    assert not np.array_equal(pixels(through_net), pixels(resized))


async def test_refiner_on_img2img(sdxl: DiffusersImageEngine) -> None:
    init = png((64, 64))
    plain = pixels(await sdxl.generate(job(steps=8, init_image=init, strength=0.6)))
    refined = await sdxl.generate(job(steps=8, init_image=init, strength=0.6, refiner_switch_at=0.5))
    assert refined.images[0].size == (64, 64)
    assert not np.array_equal(plain, pixels(refined))
    again = await sdxl.generate(job(steps=8, init_image=init, strength=0.6, refiner_switch_at=0.5))
    assert np.array_equal(pixels(refined), pixels(again))
    # The switch falls within the steps img2img runs, whatever the strength.
    weak = await sdxl.generate(job(steps=8, init_image=init, strength=0.3, refiner_switch_at=0.5))
    assert not np.array_equal(pixels(weak), pixels(await sdxl.generate(job(steps=8, init_image=init, strength=0.3))))
    with pytest.raises(InvalidJob) as caught:
        await sdxl.generate(job(init_image=init, mask_image=png((64, 64), 1), strength=0.5, refiner_switch_at=0.5))
    assert caught.value.field == "refiner_switch_at"


@pytest.mark.parametrize("model", ["sd", "sdxl"])
async def test_sd_vae_swaps_the_decoder_for_one_job(model: str, request: pytest.FixtureRequest) -> None:
    engine: DiffusersImageEngine = request.getfixturevalue(model)
    own = pixels(await engine.generate(job()))
    swapped = pixels(await engine.generate(job(vae=VAE_NAME)))
    assert not np.array_equal(own, swapped)
    assert np.array_equal(swapped, pixels(await engine.generate(job(vae=VAE_NAME))))  # cached, same result
    assert np.array_equal(own, pixels(await engine.generate(job())))  # the checkpoint's VAE is back
    # The swapped VAE also encodes img2img's input and decodes the refiner's output.
    init = png((64, 64))
    img2img = [pixels(await engine.generate(job(init_image=init, strength=0.5, vae=v))) for v in (None, VAE_NAME)]
    assert not np.array_equal(*img2img)


async def test_controlnet_guides_img2img(sd: DiffusersImageEngine) -> None:
    init, control = png((64, 64)), png((64, 64))

    def unit(**fields: Any) -> ControlUnit:
        return ControlUnit(name=CONTROLNET_NAME, image=control, **fields)

    def img2img(**fields: Any) -> ImageGeneration:
        return job(init_image=init, strength=0.6, steps=4, **fields)

    plain = pixels(await sd.generate(img2img()))
    # Strength 0 scales the ControlNet's residuals to exact zeros: plain img2img, bit for bit.
    assert np.array_equal(plain, pixels(await sd.generate(img2img(controlnets=[unit(strength=0.0)]))))
    guided = pixels(await sd.generate(img2img(controlnets=[unit(preprocessor="none")])))
    assert not np.array_equal(plain, guided)
    assert np.array_equal(guided, pixels(await sd.generate(img2img(controlnets=[unit(preprocessor="none")]))))
    edges = pixels(await sd.generate(img2img(controlnets=[unit(preprocessor="canny")])))
    assert not np.array_equal(guided, edges)
    # Guidance only in the first half of the steps differs from guidance throughout.
    early = pixels(await sd.generate(img2img(controlnets=[unit(preprocessor="none", guidance_end=0.5)])))
    assert not np.array_equal(guided, early)
    two = await sd.generate(img2img(controlnets=[unit(preprocessor="none"), unit(preprocessor="canny", strength=0.5)]))
    assert two.images[0].size == (64, 64)
    assert np.array_equal(plain, pixels(await sd.generate(img2img())))  # plain img2img is unaffected after
