"""FlowImageEngine on the tiny random FLUX.1, SD 3.5 and Qwen-Image demo pipelines: exact sizes,
the same pixels for the same seed, img2img and inpainting, and two jobs batched into one call."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines.base import BatchImageEngine, ImageGeneration, ImageResult
from engines.errors import InvalidJob
from engines.image import flow_demo
from engines.image.demo import BUILD_VERSION
from engines.image.flow import FlowImageEngine
from engines.model_build import build_atomically
from engines.registry import diffusers_factory

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=list(flow_demo.BUILDERS))
async def flow(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FlowImageEngine]:
    root: Path = tmp_path_factory.mktemp("flow-demo")
    build_atomically(root / request.param, flow_demo.BUILDERS[request.param], BUILD_VERSION)
    spec = next(spec for spec in flow_demo.catalog(root) if spec.name == request.param)
    engine = diffusers_factory()(spec)  # the registry picks the flow engine from the folder
    assert isinstance(engine, FlowImageEngine)
    await engine.load()
    yield engine
    await engine.unload()


def job(engine: FlowImageEngine, **fields: Any) -> ImageGeneration:
    guidance = engine.image_defaults.guidance_scale or 0.0
    base = {"prompt": "a red fox in the snow", "width": 64, "height": 48, "steps": 3, "guidance_scale": guidance}
    return ImageGeneration(**{**base, "seed": 42, **fields})


def pixels(result: ImageResult) -> list[np.ndarray]:
    return [np.asarray(image.convert("RGB"), dtype=np.int16) for image in result.images]


def png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def test_same_seed_same_pixels_at_the_exact_size(flow: FlowImageEngine) -> None:
    fractions: list[float] = []
    first = await flow.generate(job(flow, image_num=2), fractions.append)
    assert [image.size for image in first.images] == [(64, 48), (64, 48)]
    assert fractions and fractions[-1] == pytest.approx(1.0) and fractions == sorted(fractions)
    again = await flow.generate(job(flow, image_num=2))
    assert all(np.array_equal(a, b) for a, b in zip(pixels(first), pixels(again), strict=True))
    other = await flow.generate(job(flow, seed=43))
    assert np.abs(pixels(other)[0] - pixels(first)[0]).max() > 8
    # Image i of a job is the one-image job of seed + i.
    second = await flow.generate(job(flow, seed=43))
    assert np.array_equal(pixels(second)[0], pixels(other)[0])
    assert np.abs(pixels(first)[1] - pixels(second)[0]).max() <= 1


async def test_img2img_and_inpainting_keep_the_size(flow: FlowImageEngine) -> None:
    source = (await flow.generate(job(flow, width=80, height=64))).images[0]
    edited = await flow.generate(job(flow, width=64, height=64, init_image=png(source), strength=0.7))
    assert edited.images[0].size == (64, 64)
    from PIL import Image

    mask = png(Image.new("L", source.size, 255))
    painted = await flow.generate(job(flow, width=64, height=64, init_image=png(source), mask_image=mask, strength=0.9))
    assert painted.images[0].size == (64, 64)
    with pytest.raises(InvalidJob) as refused:
        await flow.generate(job(flow, init_image=b"not an image", strength=0.7))
    assert refused.value.field == "init_image"


async def test_two_jobs_share_one_call_with_each_jobs_pixels(flow: FlowImageEngine) -> None:
    assert isinstance(flow, BatchImageEngine)
    extra = {"negative_prompt": "blurry"} if flow.rules.negative_prompt else {}
    # Prompts of equal length: Qwen-Image's embeddings are as long as their text, and only equal
    # shapes stack (FLUX and SD3 pad to a fixed length).
    jobs = [job(flow, seed=1, **extra), job(flow, seed=2, prompt="a blue boat on a lake", image_num=2, **extra)]
    assert len({flow.batch_key(one) for one in jobs}) == 1
    calls = 0
    pipe = flow._pipe
    original = type(pipe).__call__

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(self, *args, **kwargs)

    type(pipe).__call__ = counted  # type: ignore[method-assign]
    try:
        batched = await flow.generate_batch(jobs)
    finally:
        type(pipe).__call__ = original  # type: ignore[method-assign]
    assert calls == 1
    for result, one in zip(batched, jobs, strict=True):
        alone = await flow.generate(one)
        assert result.seed == one.seed and len(result.images) == one.image_num
        for got, want in zip(pixels(result), pixels(alone), strict=True):
            assert np.abs(got - want).max() <= 1  # CPU kernels may sum a larger batch in another order
