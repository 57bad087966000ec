"""Batched image generation on the tiny random SD 1.x demo model: one pipeline call for several
jobs gives each job the pixels it gets alone, by seed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines.base import BatchImageEngine, HiresFix, ImageGeneration, ImageResult
from engines.image.demo import build_image_demo_models
from engines.image.pipelines import DiffusersImageEngine

pytestmark = pytest.mark.integration

# Over 77 tokens: the demo vocabulary has one token per character, so its embedding is longer.
LONG_PROMPT = "a watercolour painting of a lighthouse on a cliff above a stormy sea, " * 3


@pytest.fixture(scope="module")
async def sd(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DiffusersImageEngine]:
    root: Path = tmp_path_factory.mktemp("image-batch-demo")
    spec = next(spec for spec in build_image_demo_models(root) if spec.name == "demo-sd")
    engine = DiffusersImageEngine(spec)
    await engine.load()
    yield engine
    await engine.unload()


def job(**fields: Any) -> ImageGeneration:
    defaults = {"prompt": "a red fox in the snow", "width": 64, "height": 64, "steps": 2, "guidance_scale": 7.0}
    return ImageGeneration(**{**defaults, "seed": 42, **fields})


def pixels(result: ImageResult) -> list[np.ndarray]:
    return [np.asarray(image.convert("RGB"), dtype=np.int16) for image in result.images]


def assert_same_pixels(batched: ImageResult, alone: ImageResult) -> None:
    assert batched.seed == alone.seed
    assert len(batched.images) == len(alone.images)
    for got, want in zip(pixels(batched), pixels(alone), strict=True):
        # A batch runs the UNet on a larger tensor, and CPU kernels may sum in another order:
        # allow one step of 8-bit rounding, nothing more.
        assert np.abs(got - want).max() <= 1


async def test_batched_jobs_match_each_job_alone(sd: DiffusersImageEngine) -> None:
    assert isinstance(sd, BatchImageEngine)
    jobs = [
        job(seed=1),
        job(seed=2, prompt="a blue boat on a lake", negative_prompt="blurry"),
        job(seed=3, image_num=2, prompt="(a green hill:1.3) at noon"),
        job(seed=4, prompt=LONG_PROMPT),  # a longer embedding: its own call inside the batch
        job(seed=5),  # the same text as the first: one encoding serves both
    ]
    assert len({sd.batch_key(one) for one in jobs}) == 1
    fractions: list[float] = []
    batched = await sd.generate_batch(jobs, fractions.append)
    assert fractions and fractions[-1] == pytest.approx(1.0) and fractions == sorted(fractions)
    for one, result in zip(jobs, batched, strict=True):
        assert_same_pixels(result, await sd.generate(one))
    # Each job's own seed and prompt decide its images: no two jobs came out alike.
    firsts = [pixels(result)[0] for result in batched]
    assert all(np.abs(a - b).max() > 8 for i, a in enumerate(firsts) for b in firsts[i + 1 :])


async def test_batched_with_a_sampler_matches_alone(sd: DiffusersImageEngine) -> None:
    jobs = [job(seed=seed, sampler="Euler a") for seed in (10, 11, 12)]
    for one, result in zip(jobs, await sd.generate_batch(jobs), strict=True):
        assert_same_pixels(result, await sd.generate(one))


async def test_batch_keys_separate_what_cannot_share_a_call(sd: DiffusersImageEngine) -> None:
    base = sd.batch_key(job())
    assert base is not None
    assert sd.batch_key(job(seed=9, prompt="other", negative_prompt="x", image_num=3)) == base
    for different in (job(width=128), job(steps=3), job(guidance_scale=5.0), job(sampler="DDIM"), job(clip_skip=2)):
        assert sd.batch_key(different) not in (None, base)
    for alone in (
        job(hires_fix=HiresFix(width=128, height=128, strength=0.5)),
        job(init_image=b"png", strength=0.5),
        job(refiner_switch_at=0.8),
        job(sampler="DPM++ SDE"),  # draws noise from one seed per call
        job(sampler="no such sampler"),
    ):
        assert sd.batch_key(alone) is None
    with pytest.raises(ValueError):
        await sd.generate_batch([job(), job(steps=3)])
