"""The ESRGAN engine on the tiny random `demo-esrgan`, through the upscale capability.

Random weights make the pictures meaningless, but the network is deterministic, so the tests
compare pixels: equal for equal jobs, tiled equal to untiled, different where the input differs.
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

from engines.admission import AdmissionPolicy
from engines.base import DeviceSerialEngine, ModelSpec, UpscaleEngine, UpscaleJob
from engines.errors import InvalidJob, JobProblem
from engines.image.demo import BUILD_VERSION, image_demo_catalog
from engines.image.esrgan_demo import ESRGAN_DEMO_MODEL, build_esrgan_demo
from engines.image.esrgan_upscale import EsrganUpscalerEngine
from engines.model_build import build_atomically
from engines.registry import ModelRegistry, esrgan_factory
from engines.scheduler import Scheduler
from server.capabilities.images.encoding import ImageOutputs
from server.capabilities.images.generation import ImageGenerator
from server.capabilities.images.safety import NsfwDetector
from server.capabilities.upscale import Upscaler
from server.storage.local import LocalStorage

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def esrgan_spec(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    """demo-esrgan's catalog entry, built alone: the rest of the image demo is not needed here."""
    root = tmp_path_factory.mktemp("esrgan-demo")
    build_atomically(root / ESRGAN_DEMO_MODEL, build_esrgan_demo, BUILD_VERSION)
    [spec] = [spec for spec in image_demo_catalog(root) if spec.name == ESRGAN_DEMO_MODEL]
    return spec


@pytest.fixture(scope="module")
async def upscaler(esrgan_spec: ModelSpec, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Upscaler]:
    tiled = msgspec.structs.replace(
        esrgan_spec, name="demo-esrgan-tiled", aliases=[], options={"tile_size": 16, "tile_pad": 24}
    )
    scheduler = Scheduler(ModelRegistry([esrgan_spec, tiled], {"esrgan": esrgan_factory()}), AdmissionPolicy())
    storage = LocalStorage(tmp_path_factory.mktemp("outputs"), b"s" * 32)
    images = ImageGenerator(scheduler, storage, NsfwDetector(scheduler, ""))
    yield Upscaler(scheduler, images)
    await scheduler.unload_all()


def png(size: tuple[int, int], seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


async def upscaled(upscaler: Upscaler, job: UpscaleJob, model: str = ESRGAN_DEMO_MODEL) -> np.ndarray:
    """The capability's stored output of `job`, decoded; its progress ran to 1."""
    steps: list[float] = []
    upscaler.check(job)
    outcome = await upscaler.run_task("task", model, job, steps.append, ImageOutputs(image_type="png"))
    [output] = outcome.outputs
    path = upscaler.images.storage.open_path(output.key)
    assert path is not None and output.media_type == "png"
    assert steps and steps == sorted(steps) and steps[-1] == 1.0
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_the_catalog_entry_makes_an_esrgan_engine(esrgan_spec: ModelSpec) -> None:
    engine = esrgan_factory()(esrgan_spec)
    assert isinstance(engine, EsrganUpscalerEngine)
    assert isinstance(engine, UpscaleEngine) and isinstance(engine, DeviceSerialEngine)
    assert esrgan_spec.path.endswith(".safetensors")


async def test_exact_sizes_at_the_native_and_other_factors(upscaler: Upscaler) -> None:
    engine = upscaler.engine(ESRGAN_DEMO_MODEL)
    for size, scale, expected in (((24, 16), 4, (96, 64)), ((24, 16), 2, (48, 32)), ((33, 21), 2.5, (82, 52))):
        pixels = await upscaled(upscaler, UpscaleJob(image=png(size), scale=scale))
        assert (pixels.shape[1], pixels.shape[0]) == expected, scale
    assert isinstance(engine, EsrganUpscalerEngine) and engine.native_scale == 4


async def test_deterministic_and_input_dependent(upscaler: Upscaler) -> None:
    first, again, other = [await upscaled(upscaler, UpscaleJob(image=png((20, 20), s), scale=4)) for s in (1, 1, 2)]
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


async def test_tiles_leave_no_seam(upscaler: Upscaler) -> None:
    # 40x36 in 16-pixel tiles is 9 tiles; with 24 pixels of context each, the tiled picture is the untiled one.
    job = UpscaleJob(image=png((40, 36), 3), scale=4)
    untiled = await upscaled(upscaler, job)
    tiled = await upscaled(upscaler, job, "demo-esrgan-tiled")
    assert tiled.shape == untiled.shape
    assert np.abs(tiled.astype(np.int16) - untiled.astype(np.int16)).max() <= 1  # float rounding to 8 bits


async def test_progress_per_tile_and_cancellation(upscaler: Upscaler, esrgan_spec: ModelSpec) -> None:
    engine = EsrganUpscalerEngine(msgspec.structs.replace(esrgan_spec, options={"tile_size": 8}))
    await engine.load()
    steps: list[float] = []
    await engine.upscale(UpscaleJob(image=png((16, 8)), scale=4), steps.append)
    assert steps == [0.0, 0.5, 1.0]  # two tiles
    job = asyncio.create_task(engine.upscale(UpscaleJob(image=png((96, 96)), scale=4)))
    await asyncio.sleep(0.01)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    image = await asyncio.wait_for(engine.upscale(UpscaleJob(image=png((8, 8)), scale=2)), timeout=60)
    assert image.size == (16, 16)
    with pytest.raises(InvalidJob) as error:
        await engine.upscale(UpscaleJob(image=b"definitely not an image", scale=2))
    assert (error.value.problem, error.value.field) == (JobProblem.IMAGE_FORMAT, "image")
    await engine.unload()
    assert not engine.loaded


def test_the_demo_build_is_small_and_seeded(esrgan_spec: ModelSpec, tmp_path: Path) -> None:
    build_esrgan_demo(tmp_path)
    rebuilt = (tmp_path / Path(esrgan_spec.path).name).read_bytes()
    assert rebuilt == Path(esrgan_spec.path).read_bytes()
    assert len(rebuilt) < 100_000
