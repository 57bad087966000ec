"""The upscaler engine on the tiny random `demo-upscaler` (an SD x4 upscaler layout, 2 steps).

Random weights make the pictures meaningless, but every job is deterministic, so the tests
compare pixels: equal for equal jobs, different where the input differs.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engines.base import UpscaleEngine, UpscaleJob
from engines.image.demo import UPSCALER_MODEL, image_demo_catalog
from engines.image.upscale import UpscalerEngine
from engines.registry import diffusers_factory
from schemas.errors import ApiError, ErrorCode

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
async def upscaler(demo_root: Path) -> AsyncIterator[UpscalerEngine]:
    [spec] = [spec for spec in image_demo_catalog(demo_root) if spec.name == UPSCALER_MODEL]
    engine = diffusers_factory()(spec)
    assert isinstance(engine, UpscalerEngine) and isinstance(engine, UpscaleEngine)
    await engine.load()
    yield engine
    await engine.unload()


def png(size: tuple[int, int], seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_exact_sizes_for_the_native_and_a_smaller_factor(upscaler: UpscalerEngine) -> None:
    assert upscaler.native_scale == 4
    source = png((32, 32))
    for scale, size in ((2, (64, 64)), (4, (128, 128))):
        image = await upscaler.upscale(UpscaleJob(image=source, scale=scale))
        assert (image.mode, image.size) == ("RGB", size), scale


async def test_sides_off_the_model_grid_and_fractional_factors(upscaler: UpscalerEngine) -> None:
    # 30x18 is not a multiple of the x4 VAE's 4: padded for the model and cropped after, so the
    # last rows and columns are the model's output, not the black fill of a crop past the edge.
    padded = await upscaler.upscale(UpscaleJob(image=png((30, 18)), scale=4))
    assert padded.size == (120, 72)
    pixels = np.asarray(padded)
    assert pixels[:, -8:].any() and pixels[-8:, :].any()
    assert (await upscaler.upscale(UpscaleJob(image=png((33, 21)), scale=2.5))).size == (82, 52)
    assert (await upscaler.upscale(UpscaleJob(image=png((5, 3)), scale=1.5))).size == (8, 4)


async def test_deterministic_and_input_dependent(upscaler: UpscalerEngine) -> None:
    async def run(seed: int) -> np.ndarray:
        return np.asarray(await upscaler.upscale(UpscaleJob(image=png((32, 32), seed), scale=2)))

    first, again, other = await run(1), await run(1), await run(2)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


async def test_progress_runs_to_one(upscaler: UpscalerEngine) -> None:
    seen: list[float] = []
    await upscaler.upscale(UpscaleJob(image=png((16, 16)), scale=2), seen.append)
    assert seen == [0.5, 1.0]  # the demo model runs 2 steps


async def test_a_cancelled_job_frees_the_device(upscaler: UpscalerEngine) -> None:
    job = asyncio.create_task(upscaler.upscale(UpscaleJob(image=png((64, 64)), scale=4)))
    await asyncio.sleep(0.01)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    image = await asyncio.wait_for(upscaler.upscale(UpscaleJob(image=png((16, 16)), scale=2)), timeout=60)
    assert image.size == (32, 32)


async def test_not_an_image(upscaler: UpscalerEngine) -> None:
    with pytest.raises(ApiError) as error:
        await upscaler.upscale(UpscaleJob(image=b"definitely not an image", scale=2))
    assert error.value.code is ErrorCode.INVALID_IMAGE_FORMAT
