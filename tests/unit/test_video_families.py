"""The video families' rules (engines/video/families.py) and how the /v3 and OpenAI video routes
apply them: frame counts (Wan 4k+1, LTX-Video 8k+1), side multiples (16, 32), per-family
defaults for what a client leaves out, and 400s naming the field a family cannot honour. The
engines are fakes that record their jobs; tests/integration/test_video_families.py runs the
real pipelines."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from engines.base import ModelKind, ModelSpec, VideoGeneration, VideoMode, VideoPrompt
from engines.errors import InvalidJob
from engines.video.animated import animated_checkpoints
from engines.video.families import LTX_FAMILY, SVD_FAMILY, WAN_FAMILY, check_job, model_defaults, pipeline_class_name
from server.app import build_components, create_app
from server.settings import Settings
from tests.fakes import FAKE_SPECS
from tests.unit.test_image_tasks import poll
from tests.unit.test_video_tasks import IMAGE_SPEC, TEXT_SPEC, FakeVideoEngine, download, factory, png, probe


class FamilyVideoEngine(FakeVideoEngine):
    """The fake engine, with its mode read from any pipeline class name and its frame rate and
    size from the model's defaults, as the diffusers engine has them."""

    @property
    def fps(self) -> int:
        return model_defaults(self.spec).fps

    @property
    def native_size(self) -> tuple[int, int]:
        return model_defaults(self.spec).native_size

    @property
    def mode(self) -> VideoMode:
        pipeline = pipeline_class_name(self.spec)
        image = "ImageToVideo" in pipeline or "StableVideo" in pipeline
        return "image-to-video" if image else "text-to-video"


def _spec(name: str, pipeline: str, **options: Any) -> ModelSpec:
    return ModelSpec(
        name=name, kind=ModelKind.VIDEO, engine="family-video", path="-", options={"pipeline": pipeline, **options}
    )


SPECS = [
    _spec("fake-wan", "WanPipeline"),
    _spec("fake-wan-i2v", "WanImageToVideoPipeline", width=64, height=64),
    _spec("fake-ltx", "LTXPipeline"),
    _spec("fake-ltx-i2v", "LTXImageToVideoPipeline", width=64, height=64, steps=2, frames=9, fps=8),
]


def _factory(spec: ModelSpec) -> Any:
    video = spec.engine == "family-video" or (spec.engine == "diffusers" and spec.kind is ModelKind.VIDEO)
    return FamilyVideoEngine(spec) if video else factory(spec)


def _sd_checkpoint(folder: Path, name: str, pipeline: str = "StableDiffusionPipeline") -> ModelSpec:
    """An image model whose folder says which pipeline it is (the twins read only that)."""
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    return ModelSpec(name=name, kind=ModelKind.IMAGE, engine="fake", path=str(folder))


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[AsyncTestClient]:
    settings = msgspec.convert({"data_dir": str(tmp_path), "video": {"motion_adapter": "/adapters/motion"}}, Settings)
    factories = {"fake": _factory, "fake-video": _factory, "family-video": _factory, "diffusers": _factory}
    checkpoints = [
        _sd_checkpoint(tmp_path / "sd", "fake-sd15"),
        _sd_checkpoint(tmp_path / "sdxl", "fake-sdxl", "StableDiffusionXLPipeline"),
    ]
    state = build_components(settings, [*FAKE_SPECS, TEXT_SPEC, IMAGE_SPEC, *SPECS, *checkpoints], factories)
    async with AsyncTestClient(create_app(state)) as test_client:
        await state.load_task  # type: ignore[misc]
        test_client.app_state = state  # type: ignore[attr-defined]
        yield test_client


def jobs(client: AsyncTestClient, name: str) -> list[VideoGeneration]:
    engine: FamilyVideoEngine = client.app_state.scheduler.engine(name)  # type: ignore[attr-defined]
    return engine.jobs


def txt2video(model: str, frames: int = 9, **fields: Any) -> dict[str, Any]:
    return {
        "model_name": model,
        "width": 64,
        "height": 64,
        "prompts": [{"frames": frames, "prompt": "a fox"}],
        **fields,
    }


def img2video(model: str, **fields: Any) -> dict[str, Any]:
    return {"model_name": model, "image_file": png((64, 64)), "frames_num": 9, "steps": 2, **fields}


# -- the rules themselves -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "valid", "invalid"),
    [(WAN_FAMILY, [1, 5, 9, 81], [2, 4, 8, 10, 80]), (LTX_FAMILY, [1, 9, 17, 161], [5, 8, 10, 13, 160])],
)
def test_frame_rules(family: Any, valid: list[int], invalid: list[int]) -> None:
    assert all(family.fits_frames(n) for n in valid)
    assert not any(family.fits_frames(n) for n in invalid)
    assert all(family.fits_frames(family.nearest_frames(n)) for n in range(0, 200))


def test_nearest_frames_for_seconds() -> None:
    assert [WAN_FAMILY.nearest_frames(n) for n in (1, 8, 16, 24)] == [1, 9, 17, 25]
    assert [LTX_FAMILY.nearest_frames(n) for n in (1, 8, 24, 48)] == [1, 9, 25, 49]
    assert SVD_FAMILY.nearest_frames(14) == 14


def test_check_job_names_the_field() -> None:
    job = VideoGeneration(width=64, height=64, steps=1, seed=0, prompts=[VideoPrompt(prompt="x", frames=10)])
    with pytest.raises(InvalidJob) as refused:
        check_job(WAN_FAMILY, "m", job, text_to_video=True)
    assert refused.value.field == "prompts" and "4k+1" in refused.value.message
    check_job(SVD_FAMILY, "m", VideoGeneration(width=64, height=64, steps=1, seed=0, image=b"x", num_frames=10),
              text_to_video=False)  # fmt: skip


# -- /v3 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("txt2video", txt2video("fake-wan", 10), "prompts"),
        ("txt2video", txt2video("fake-ltx", 13), "prompts"),  # 4k+1, not 8k+1
        ("txt2video", txt2video("fake-wan", width=72), "width"),
        ("txt2video", txt2video("fake-ltx", height=80), "height"),  # a multiple of 16, not 32
        ("txt2video", txt2video("fake-wan", clip_skip=2), "clip_skip"),
        ("txt2video", txt2video("fake-ltx", closed_loop=True), "closed_loop"),
        ("txt2video", txt2video("fake-ltx", flow_shift=3), "flow_shift"),  # LTX shifts by resolution
        ("txt2video", txt2video("fake-wan", loras=[{"model_name": "ok-lora", "strength": 1}]), "loras"),
        ("txt2video", txt2video("fake-wan", embeddings=[{"model_name": "some-embedding"}]), "embeddings"),
        (
            "txt2video",
            txt2video("fake-wan", prompts=[{"frames": 4, "prompt": "a"}, {"frames": 5, "prompt": "b"}]),
            "prompts",
        ),
        ("img2video", img2video("fake-wan-i2v", frames_num=10), "frames_num"),
        ("img2video", img2video("fake-ltx-i2v", frames_num=5), "frames_num"),
        ("img2video", img2video("fake-wan-i2v", motion_bucket_id=100), "motion_bucket_id"),
        ("img2video", img2video("fake-ltx-i2v", cond_aug=0.1), "cond_aug"),
        ("img2video", img2video("fake-wan-i2v", motion_bucket_id=128), "motion_bucket_id"),
        ("img2video", img2video("fake-svd", frames_num=3, prompt="move"), "prompt"),
        ("img2video", img2video("fake-svd", frames_num=3, negative_prompt="blur"), "negative_prompt"),
        ("img2video", img2video("fake-svd", frames_num=3, guidance_scale=3), "guidance_scale"),
    ],
)
async def test_what_a_family_cannot_run_is_a_400_naming_the_field(
    client: AsyncTestClient, path: str, body: dict[str, Any], param: str
) -> None:
    response = await client.post(f"/v3/async/{path}", json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["reason"] == "INVALID_REQUEST_BODY"
    assert error["metadata"]["param"] == param
    assert await client.app_state.task_store.next_queued(10) == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("model", "steps", "guidance", "fps"),
    [("fake-wan", 50, 5.0, 16), ("fake-ltx", 50, 3.0, 24), ("fake-animatediff", 3, 7.5, 4)],
)
async def test_txt2video_defaults_are_the_models(
    client: AsyncTestClient, model: str, steps: int, guidance: float, fps: int
) -> None:
    submitted = await client.post("/v3/async/txt2video", json=txt2video(model))
    assert submitted.status_code == 200, submitted.text
    result = await poll(client, submitted.json()["task_id"])
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED", result["task"]["reason"]
    [job] = jobs(client, model)
    assert (job.steps, job.guidance_scale, job.fps) == (steps, guidance, fps)
    data, _ = await download(client, result["videos"][0]["video_url"])
    assert probe(data)[1:] == (9, (64, 64), float(fps))


async def test_sent_values_win_over_the_defaults(client: AsyncTestClient) -> None:
    submitted = await client.post("/v3/async/txt2video", json=txt2video("fake-wan", 17, steps=3, guidance_scale=2))
    await poll(client, submitted.json()["task_id"])
    [job] = jobs(client, "fake-wan")
    assert (job.steps, job.guidance_scale, job.frame_count) == (3, 2.0, 17)


async def test_img2video_wan_and_ltx_take_a_prompt_and_their_defaults(client: AsyncTestClient) -> None:
    body = img2video("fake-ltx-i2v", prompt="the fox runs", negative_prompt="blur")
    del body["frames_num"], body["steps"]
    submitted = await client.post("/v3/async/img2video", json=body)
    assert submitted.status_code == 200, submitted.text
    result = await poll(client, submitted.json()["task_id"])
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED", result["task"]["reason"]
    [job] = jobs(client, "fake-ltx-i2v")
    assert (job.image_prompt, job.negative_prompt) == ("the fox runs", "blur")
    assert (job.num_frames, job.steps, job.fps, job.guidance_scale) == (9, 2, 8, 3.0)  # catalog, then family
    assert (job.motion_bucket_id, job.noise_aug_strength) == (None, None)
    data, _ = await download(client, result["videos"][0]["video_url"])
    assert probe(data)[1:] == (9, (64, 64), 8.0)


async def test_svd_defaults_pass_as_novita_client_sends_them(client: AsyncTestClient) -> None:
    submitted = await client.post(
        "/v3/async/img2video", json=img2video("fake-wan-i2v", motion_bucket_id=127, cond_aug=0.02)
    )
    assert submitted.status_code == 200, submitted.text


async def test_img2video_original_dimension_rounds_down_to_the_family_multiple(client: AsyncTestClient) -> None:
    body = img2video("fake-ltx-i2v", image_file=png((100, 70)), image_file_resize_mode="ORIGINAL_DIMENSION")
    submitted = await client.post("/v3/async/img2video", json=body)
    await poll(client, submitted.json()["task_id"])
    [job] = jobs(client, "fake-ltx-i2v")
    assert (job.width, job.height) == (96, 64)


async def test_svd_keeps_its_conditioning_defaults(client: AsyncTestClient) -> None:
    submitted = await client.post("/v3/async/img2video", json=img2video("fake-svd", frames_num=3))
    await poll(client, submitted.json()["task_id"])
    [job] = jobs(client, "fake-svd")
    assert (job.guidance_scale, job.image_prompt, job.motion_bucket_id) == (None, "", None)


# -- OpenAI /v1/videos --------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "seconds", "frames"), [("fake-wan", "1", 17), ("fake-ltx", "1", 25)])
async def test_openai_seconds_become_the_nearest_valid_frame_count(
    client: AsyncTestClient, model: str, seconds: str, frames: int
) -> None:
    fields = {"prompt": "a fox", "model": model, "seconds": seconds, "size": "64x64"}
    created = await client.post("/openai/v1/videos", files={k: (None, v) for k, v in fields.items()})
    assert created.status_code == 200, created.text
    await poll(client, created.json()["id"])
    [job] = jobs(client, model)
    assert job.frame_count == frames


@pytest.mark.parametrize(("model", "size"), [("fake-wan", "72x64"), ("fake-ltx", "96x80")])
async def test_openai_size_off_the_family_multiple_is_refused(client: AsyncTestClient, model: str, size: str) -> None:
    fields = {"prompt": "a fox", "model": model, "seconds": "1", "size": size}
    response = await client.post("/openai/v1/videos", files={k: (None, v) for k, v in fields.items()})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "size"


async def test_openai_image_to_video_passes_the_prompt_to_wan(client: AsyncTestClient) -> None:
    image = base64.b64decode(png((64, 64)))
    created = await client.post(
        "/openai/v1/videos",
        files={"input_reference": ("ref.png", image, "image/png")},
        data={"prompt": "make it move", "seconds": "1", "model": "fake-wan-i2v"},
    )
    assert created.status_code == 200, created.text
    await poll(client, created.json()["id"])
    [job] = jobs(client, "fake-wan-i2v")
    assert (job.image_prompt, job.num_frames, (job.width, job.height)) == ("make it move", 17, (64, 64))


# -- SD 1.x checkpoints as txt2video models -----------------------------------------------------


async def test_txt2video_animates_an_sd1_checkpoint_with_the_motion_adapter(client: AsyncTestClient) -> None:
    body = txt2video("fake-sd15", 6, steps=2)
    submitted = await client.post("/v3/async/txt2video", json=body)
    assert submitted.status_code == 200, submitted.text
    result = await poll(client, submitted.json()["task_id"])
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED", result["task"]["reason"]
    twin: FamilyVideoEngine = client.app_state.scheduler.engine("fake-sd15-animatediff")  # type: ignore[attr-defined]
    assert twin.spec.options["motion_adapter"] == "/adapters/motion"
    assert twin.spec.path.endswith("sd")
    [job] = twin.jobs
    assert (job.frame_count, job.steps, job.guidance_scale) == (6, 2, 7.5)  # AnimateDiff's rules and defaults


@pytest.mark.parametrize(
    ("path", "body"), [("txt2video", txt2video("fake-sdxl")), ("img2video", img2video("fake-sd15"))]
)
async def test_other_image_models_and_modes_are_refused(
    client: AsyncTestClient, path: str, body: dict[str, Any]
) -> None:
    response = await client.post(f"/v3/async/{path}", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["metadata"]["param"] == "model_name"


def test_twins_only_for_sd1_checkpoints_with_an_adapter(tmp_path: Path) -> None:
    sd = _sd_checkpoint(tmp_path / "sd", "sd")
    sdxl = _sd_checkpoint(tmp_path / "sdxl", "sdxl", "StableDiffusionXLPipeline")
    inpaint = msgspec.structs.replace(_sd_checkpoint(tmp_path / "inp", "inp"), options={"inpainting": True})
    adapter_model = ModelSpec(
        name="ad", kind=ModelKind.VIDEO, engine="diffusers", path="-",
        options={"motion_adapter": "/from/catalog", "context_frames": 8},
    )  # fmt: skip
    assert animated_checkpoints([sd, sdxl, inpaint]) == []  # no adapter anywhere
    [twin] = animated_checkpoints([sd, sdxl, inpaint, adapter_model])
    assert (twin.name, twin.kind, twin.path) == ("sd-animatediff", ModelKind.VIDEO, sd.path)
    assert twin.options == {"motion_adapter": "/from/catalog", "animates": "sd", "context_frames": 8}
    [configured] = animated_checkpoints([sd, adapter_model], "/configured")
    assert configured.options["motion_adapter"] == "/configured"
