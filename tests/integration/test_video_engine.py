"""The diffusers video engine on the tiny random AnimateDiff and SVD demo models (64-pixel sides,
a handful of frames, 2 steps).

Random weights make the frames meaningless, but every job is deterministic, so the tests compare
pixels: equal where the engine promises equality, different where an input must have an effect.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engines.base import LoraWeight, ModelSpec, VideoEngine, VideoGeneration, VideoPrompt
from engines.errors import InvalidJob
from engines.video.demo import (
    ANIMATEDIFF_MODEL,
    DEMO_CONTEXT_FRAMES,
    DEMO_SVD_SIZE,
    EMBEDDING_NAME,
    LORA_NAME,
    SVD_MODEL,
    build_video_demo_models,
)
from engines.video.pipelines import DiffusersVideoEngine

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def video_specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelSpec]:
    root: Path = tmp_path_factory.mktemp("video-demo")
    return {spec.name: spec for spec in build_video_demo_models(root)}


async def _loaded(spec: ModelSpec) -> DiffusersVideoEngine:
    engine = DiffusersVideoEngine(spec)
    await engine.load()
    return engine


@pytest.fixture(scope="session")
async def animatediff(video_specs: dict[str, ModelSpec]) -> AsyncIterator[DiffusersVideoEngine]:
    engine = await _loaded(video_specs[ANIMATEDIFF_MODEL])
    yield engine
    await engine.unload()


@pytest.fixture(scope="session")
async def svd(video_specs: dict[str, ModelSpec]) -> AsyncIterator[DiffusersVideoEngine]:
    engine = await _loaded(video_specs[SVD_MODEL])
    yield engine
    await engine.unload()


def text_job(**fields: Any) -> VideoGeneration:
    # Guidance 1 runs one UNet pass per step instead of two: half the time, same code path.
    defaults: dict[str, Any] = {
        "prompts": [VideoPrompt(prompt="a red fox running in the snow", frames=4)],
        "width": 64,
        "height": 48,
        "steps": 2,
        "seed": 42,
        "guidance_scale": 1.0,
    }
    return VideoGeneration(**{**defaults, **fields})


def png(size: tuple[int, int]) -> bytes:
    width, height = size
    gradient = np.linspace(0, 255, width * height * 3).astype(np.uint8).reshape(height, width, 3)
    buffer = io.BytesIO()
    Image.fromarray(gradient).save(buffer, format="PNG")
    return buffer.getvalue()


def image_job(**fields: Any) -> VideoGeneration:
    width, height = DEMO_SVD_SIZE
    defaults: dict[str, Any] = {
        "image": png((width, height)),
        "num_frames": 3,
        "width": width,
        "height": height,
        "steps": 2,
        "seed": 7,
    }
    return VideoGeneration(**{**defaults, **fields})


def changed(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


async def test_engines_meet_the_protocol_and_know_their_mode(
    animatediff: DiffusersVideoEngine, svd: DiffusersVideoEngine
) -> None:
    for engine in (animatediff, svd):
        assert isinstance(engine, VideoEngine)
        assert await engine.health()
        assert 100_000 < engine.memory_bytes() < 50_000_000  # the tiny models' float32 weights
    assert animatediff.mode == "text-to-video"
    assert svd.mode == "image-to-video"
    assert svd.native_size == DEMO_SVD_SIZE


async def test_text_to_video_has_the_requested_frames_and_size(animatediff: DiffusersVideoEngine) -> None:
    result = await animatediff.generate(
        text_job(prompts=[VideoPrompt(prompt="a cat", frames=2), VideoPrompt(prompt="a dog", frames=3)])
    )
    assert result.frames.shape == (5, 48, 64, 3)
    assert result.frames.dtype == np.uint8
    assert result.seed == 42
    assert result.frames.std() > 0  # not a blank video


async def test_same_seed_same_frames_other_seed_other_frames(animatediff: DiffusersVideoEngine) -> None:
    first = await animatediff.generate(text_job())
    again = await animatediff.generate(text_job())
    other = await animatediff.generate(text_job(seed=43))
    assert np.array_equal(first.frames, again.frames)
    assert changed(first.frames, other.frames) > 1


async def test_progress_is_reported_per_step_up_to_done(animatediff: DiffusersVideoEngine) -> None:
    seen: list[float] = []
    await animatediff.generate(text_job(steps=3), seen.append)
    assert seen == pytest.approx([1 / 3, 2 / 3, 1.0])


async def test_each_prompt_segment_conditions_its_own_frames(animatediff: DiffusersVideoEngine) -> None:
    cat = VideoPrompt(prompt="a cat sleeping on a sofa", frames=3)
    dog = VideoPrompt(prompt="a dog jumping into a lake", frames=3)
    travel = (await animatediff.generate(text_job(prompts=[cat, dog]))).frames
    all_cat = (await animatediff.generate(text_job(prompts=[VideoPrompt(prompt=cat.prompt, frames=6)]))).frames
    all_dog = (await animatediff.generate(text_job(prompts=[VideoPrompt(prompt=dog.prompt, frames=6)]))).frames
    # The second half follows the dog prompt rather than the cat one, the first half the reverse.
    assert changed(travel[3:], all_dog[3:]) < changed(travel[3:], all_cat[3:])
    assert changed(travel[:3], all_cat[:3]) < changed(travel[:3], all_dog[:3])


async def test_videos_longer_than_the_motion_context_use_sliding_windows(animatediff: DiffusersVideoEngine) -> None:
    frames = DEMO_CONTEXT_FRAMES + 4
    result = await animatediff.generate(text_job(prompts=[VideoPrompt(prompt="waves", frames=frames)]))
    assert result.frames.shape == (frames, 48, 64, 3)


async def test_closed_loop_changes_the_video_and_keeps_its_frames(animatediff: DiffusersVideoEngine) -> None:
    plain = (await animatediff.generate(text_job(steps=3))).frames
    loop = (await animatediff.generate(text_job(steps=3, closed_loop=True))).frames
    again = (await animatediff.generate(text_job(steps=3, closed_loop=True))).frames
    assert loop.shape == plain.shape
    assert np.array_equal(loop, again)
    # The motion modules saw the frames in other orders on the way (the tiny random ones weigh
    # frame order lightly, so the change is small but real)...
    assert not np.array_equal(loop, plain)
    # ...and the frames come back in their own order, not rotated.
    assert changed(loop, plain) < changed(loop, np.roll(plain, 1, axis=0)) / 10


async def test_guidance_negative_prompt_and_clip_skip_have_effects(animatediff: DiffusersVideoEngine) -> None:
    base = (await animatediff.generate(text_job(guidance_scale=7.0))).frames
    negative = (await animatediff.generate(text_job(guidance_scale=7.0, negative_prompt="blurry, dark"))).frames
    skipped = (await animatediff.generate(text_job(guidance_scale=7.0, clip_skip=2))).frames
    assert changed(base, negative) > 0.5
    assert changed(base, skipped) > 0.5
    # clip skip 1 is "all layers": the same as none.
    assert np.array_equal(base, (await animatediff.generate(text_job(guidance_scale=7.0, clip_skip=1))).frames)
    with pytest.raises(InvalidJob) as error:
        await animatediff.generate(text_job(clip_skip=9))
    assert error.value.field == "clip_skip"


async def test_lora_and_embedding_apply_and_switch_off_again(animatediff: DiffusersVideoEngine) -> None:
    base = (await animatediff.generate(text_job())).frames
    lora = (await animatediff.generate(text_job(loras=[LoraWeight(name=LORA_NAME)]))).frames
    assert changed(base, lora) > 0.5
    assert np.array_equal(base, (await animatediff.generate(text_job())).frames)
    prompt = [VideoPrompt(prompt=f"a {EMBEDDING_NAME} fox", frames=4)]
    plain_prompt = [VideoPrompt(prompt="a fox", frames=4)]
    embedded = await animatediff.generate(text_job(prompts=prompt, embeddings=[EMBEDDING_NAME], guidance_scale=7.0))
    plain = await animatediff.generate(text_job(prompts=plain_prompt, guidance_scale=7.0))
    assert changed(embedded.frames, plain.frames) > 0.5
    with pytest.raises(InvalidJob) as error:
        await animatediff.generate(text_job(loras=[LoraWeight(name="no-such-lora")]))
    assert error.value.field == "loras"


async def test_bad_text_jobs_fail_before_running(animatediff: DiffusersVideoEngine) -> None:
    for job, field in (
        (text_job(width=60), "width"),
        (text_job(prompts=[]), "prompts"),
        (text_job(prompts=[VideoPrompt(prompt="x" * 80, frames=2)]), "prompts"),  # over CLIP's 77 tokens
    ):
        with pytest.raises(InvalidJob) as error:
            await animatediff.generate(job)
        assert error.value.field == field


async def test_image_to_video_has_the_requested_frames_and_size(svd: DiffusersVideoEngine) -> None:
    seen: list[float] = []
    result = await svd.generate(image_job(), seen.append)
    width, height = DEMO_SVD_SIZE
    assert result.frames.shape == (3, height, width, 3)
    assert seen == pytest.approx([0.5, 1.0])
    # Another size: the conditioning image is cropped and resized to it.
    square = await svd.generate(image_job(width=64, height=64, num_frames=2))
    assert square.frames.shape == (2, 64, 64, 3)


async def test_image_to_video_is_deterministic_and_follows_its_conditioning(svd: DiffusersVideoEngine) -> None:
    first = (await svd.generate(image_job())).frames
    assert np.array_equal(first, (await svd.generate(image_job())).frames)
    assert changed(first, (await svd.generate(image_job(seed=8))).frames) > 0.5
    assert changed(first, (await svd.generate(image_job(motion_bucket_id=20))).frames) > 0.1
    assert changed(first, (await svd.generate(image_job(image=png((64, 96))))).frames) > 0.1


async def test_image_to_video_refuses_text_only_features(svd: DiffusersVideoEngine) -> None:
    for job, field in (
        (image_job(image=None), "image"),
        (image_job(image=b"not an image"), "image"),
        (image_job(closed_loop=True), "closed_loop"),
    ):
        with pytest.raises(InvalidJob) as error:
            await svd.generate(job)
        assert error.value.field == field
