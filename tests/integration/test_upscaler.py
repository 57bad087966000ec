"""The upscaler engine on the tiny random `demo-upscaler` (an SD x4 upscaler layout, 2 steps).

Random weights make the pictures meaningless, but every job is deterministic, so the tests
compare pixels: equal for equal jobs, different where the input differs.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import numpy as np
import pytest
from PIL import Image

from engines.base import UpscaleEngine, UpscaleJob
from engines.errors import InvalidJob, JobProblem
from engines.image.demo import UPSCALER_MODEL, image_demo_catalog
from engines.image.upscale import UpscalerEngine
from engines.registry import diffusers_factory

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


async def test_refuses_a_non_image_and_a_non_positive_scale(upscaler: UpscalerEngine) -> None:
    with pytest.raises(InvalidJob) as error:
        await upscaler.upscale(UpscaleJob(image=b"definitely not an image", scale=2))
    assert (error.value.problem, error.value.field) == (JobProblem.IMAGE_FORMAT, "image")
    with pytest.raises(InvalidJob) as bad_scale:
        await upscaler.upscale(UpscaleJob(image=png((8, 8)), scale=0))
    assert (bad_scale.value.problem, bad_scale.value.field) == (JobProblem.INVALID, "scale")


@pytest.fixture(scope="session")
async def tiled(demo_root: Path) -> AsyncIterator[UpscalerEngine]:
    """The demo upscaler with 32-pixel tiles overlapping by 8: small inputs already need several."""
    [spec] = [spec for spec in image_demo_catalog(demo_root) if spec.name == UPSCALER_MODEL]
    engine = UpscalerEngine(msgspec.structs.replace(spec, options={**spec.options, "tile_size": 32, "tile_overlap": 8}))
    await engine.load()
    yield engine
    await engine.unload()


async def test_tiled_upscale_keeps_the_exact_size_and_is_deterministic(tiled: UpscalerEngine) -> None:
    for size, scale, expected in (((60, 44), 2, (120, 88)), ((70, 33), 2.5, (175, 82))):
        steps: list[float] = []
        first = await tiled.upscale(UpscaleJob(image=png(size), scale=scale), steps.append)
        again = await tiled.upscale(UpscaleJob(image=png(size), scale=scale))
        assert first.size == expected and first.mode == "RGB"
        assert np.array_equal(np.asarray(first), np.asarray(again))
        assert len(steps) > 2 and steps == sorted(steps) and steps[-1] == 1.0  # several tiles, one progress
    # Every tile depends on its part of the input.
    source = np.asarray(Image.open(io.BytesIO(png((60, 44)))))
    changed = source.copy()
    changed[-8:, -8:] = 0  # only the bottom-right tile sees this
    buffer = io.BytesIO()
    Image.fromarray(changed).save(buffer, format="PNG")
    base, edited = [
        np.asarray(await tiled.upscale(UpscaleJob(image=data, scale=2)), dtype=np.int16)
        for data in (png((60, 44)), buffer.getvalue())
    ]
    assert np.array_equal(base[:40, :40], edited[:40, :40])  # the top-left tile is untouched
    assert not np.array_equal(base[-16:, -16:], edited[-16:, -16:])


async def test_an_input_within_one_tile_takes_the_untiled_path(tiled: UpscalerEngine, upscaler: UpscalerEngine) -> None:
    steps: list[float] = []
    image = await tiled.upscale(UpscaleJob(image=png((32, 28)), scale=2), steps.append)
    assert steps == [0.5, 1.0]  # one pipeline run of the demo's two steps
    untiled = await upscaler.upscale(UpscaleJob(image=png((32, 28)), scale=2))
    assert np.array_equal(np.asarray(image), np.asarray(untiled))
