"""The diffusers video engine on the tiny random Wan and LTX-Video demo models (64x64, 9 frames,
2 steps): the frame counts each family's rule allows, determinism, image-to-video conditioning,
and the refusals of what a family cannot honour. Random weights make the frames meaningless;
every job is deterministic, so the tests compare pixels."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engines.base import ModelSpec, VideoGeneration, VideoPrompt
from engines.errors import InvalidJob
from engines.video.demo import build_video_demo_models
from engines.video.ltx_demo import LTX_I2V_MODEL, LTX_MODEL
from engines.video.pipelines import DiffusersVideoEngine
from engines.video.wan_demo import WAN_I2V_MODEL, WAN_MODEL

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def family_specs(demo_root: Path) -> dict[str, ModelSpec]:
    return {spec.name: spec for spec in build_video_demo_models(demo_root)}


@pytest.fixture(scope="session")
async def engines(family_specs: dict[str, ModelSpec]) -> AsyncIterator[dict[str, DiffusersVideoEngine]]:
    loaded = {}
    for name in (WAN_MODEL, WAN_I2V_MODEL, LTX_MODEL, LTX_I2V_MODEL):
        engine = DiffusersVideoEngine(family_specs[name])
        await engine.load()
        loaded[name] = engine
    yield loaded
    for engine in loaded.values():
        await engine.unload()


def png(size: tuple[int, int], colour: tuple[int, int, int] = (220, 30, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def text_job(frames: int = 9, **fields: Any) -> VideoGeneration:
    defaults: dict[str, Any] = {
        "prompts": [VideoPrompt(prompt="a red fox running in the snow", frames=frames)],
        "width": 64,
        "height": 64,
        "steps": 2,
        "seed": 11,
        "guidance_scale": 1.0,  # one transformer pass per step: the same path, half the time
    }
    return VideoGeneration(**{**defaults, **fields})


def image_job(frames: int = 9, **fields: Any) -> VideoGeneration:
    defaults: dict[str, Any] = {
        "image": png((64, 64)),
        "image_prompt": "the fox turns its head",
        "num_frames": frames,
        "width": 64,
        "height": 64,
        "steps": 2,
        "seed": 11,
        "guidance_scale": 1.0,
    }
    return VideoGeneration(**{**defaults, **fields})


def changed(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize(("name", "frames", "size"), [(WAN_MODEL, 13, (80, 48)), (LTX_MODEL, 17, (96, 64))])
async def test_text_to_video_has_the_rules_frame_count_and_the_requested_size(
    engines: dict[str, DiffusersVideoEngine], name: str, frames: int, size: tuple[int, int]
) -> None:
    engine = engines[name]
    assert engine.mode == "text-to-video"
    result = await engine.generate(text_job(frames, width=size[0], height=size[1]))
    assert result.frames.shape == (frames, size[1], size[0], 3)
    assert result.frames.dtype == np.uint8 and result.frames.std() > 0


@pytest.mark.parametrize("name", [WAN_MODEL, LTX_MODEL, WAN_I2V_MODEL, LTX_I2V_MODEL])
async def test_same_seed_same_frames_other_seed_other_frames(
    engines: dict[str, DiffusersVideoEngine], name: str
) -> None:
    engine = engines[name]
    job = image_job if engine.mode == "image-to-video" else text_job
    first = (await engine.generate(job())).frames
    again = (await engine.generate(job())).frames
    other = (await engine.generate(job(seed=12))).frames
    assert np.array_equal(first, again)
    assert changed(first, other) > 0.5


@pytest.mark.parametrize(("name", "frames"), [(WAN_I2V_MODEL, 9), (LTX_I2V_MODEL, 9)])
async def test_image_to_video_is_conditioned_on_the_image_and_the_prompt(
    engines: dict[str, DiffusersVideoEngine], name: str, frames: int
) -> None:
    engine = engines[name]
    assert engine.mode == "image-to-video"
    red = (await engine.generate(image_job(frames))).frames
    assert red.shape == (frames, 64, 64, 3)
    blue = (await engine.generate(image_job(frames, image=png((64, 64), (20, 40, 230))))).frames
    other_text = (await engine.generate(image_job(frames, image_prompt="a boat on a lake"))).frames
    # Random weights move the frames only a little; any change shows the input reaches them.
    assert changed(red, blue) > 0.01
    assert changed(red, other_text) > 0.01


@pytest.mark.parametrize(
    ("name", "job", "field"),
    [
        (WAN_MODEL, text_job(11), "prompts"),  # not 4k+1
        (LTX_MODEL, text_job(13), "prompts"),  # 4k+1 but not 8k+1
        (WAN_MODEL, text_job(width=72), "width"),  # a multiple of 8, not of 16
        (LTX_MODEL, text_job(height=48), "height"),  # a multiple of 16, not of 32
        (WAN_I2V_MODEL, image_job(10), "num_frames"),
        (WAN_MODEL, text_job(clip_skip=2), "clip_skip"),
        (LTX_MODEL, text_job(closed_loop=True), "closed_loop"),
        (
            WAN_MODEL,
            text_job(prompts=[VideoPrompt(prompt="a", frames=4), VideoPrompt(prompt="b", frames=5)]),
            "prompts",
        ),
        (LTX_I2V_MODEL, image_job(motion_bucket_id=100), "motion_bucket_id"),
    ],
)
async def test_what_the_family_cannot_run_is_refused_naming_the_field(
    engines: dict[str, DiffusersVideoEngine], name: str, job: VideoGeneration, field: str
) -> None:
    with pytest.raises(InvalidJob) as refused:
        await engines[name].generate(job)
    assert refused.value.field == field


async def test_flow_shift_reaches_the_wan_scheduler(engines: dict[str, DiffusersVideoEngine]) -> None:
    engine = engines[WAN_MODEL]
    default = (await engine.generate(text_job())).frames
    shifted = (await engine.generate(text_job(flow_shift=8.0))).frames
    again = (await engine.generate(text_job())).frames
    assert changed(default, shifted) > 0.01
    assert np.array_equal(default, again)  # the shift was for that job only
