"""Novita's fixed-model video routes (/v3/async/wan-t2v, /wan-i2v, /hunyuan-video-fast) on fake
engines: the documented fields and ranges, the model chosen by name or alias and family, the
txt2video / img2video task each request becomes, and what is refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from engines.base import ModelKind, ModelSpec, VideoGeneration
from server.app import build_components, create_app
from server.settings import Settings
from tests.fakes import FAKE_SPECS
from tests.unit.test_video_families import _factory
from tests.unit.test_video_tasks import download, png, probe


def _spec(name: str, pipeline: str, alias: str) -> ModelSpec:
    # 4 fps keeps the pages' 5-second clips at 21 frames for the fakes.
    return ModelSpec(
        name=name, kind=ModelKind.VIDEO, engine="family-video", path="-", aliases=[alias],
        options={"pipeline": pipeline, "fps": 4},
    )  # fmt: skip


SPECS = [
    _spec("my-wan", "WanPipeline", "wan2.1-t2v"),
    _spec("my-wan-i2v", "WanImageToVideoPipeline", "wan2.1-i2v"),
    _spec("my-hunyuan", "HunyuanVideoPipeline", "hunyuan-video-fast"),
    _spec("my-ltx", "LTXPipeline", "ltx-video"),
]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[AsyncTestClient]:
    settings = msgspec.convert({"data_dir": str(tmp_path)}, Settings)
    factories = {"fake": _factory, "family-video": _factory}
    state = build_components(settings, [*FAKE_SPECS, *SPECS], factories)
    async with AsyncTestClient(create_app(state)) as test_client:
        await state.load_task  # type: ignore[misc]
        test_client.app_state = state  # type: ignore[attr-defined]
        yield test_client


async def poll(client: AsyncTestClient, task_id: str) -> dict[str, Any]:
    """The finished task result; these clips are large for a fake (up to 89 frames of 640x480)."""
    for _ in range(600):
        body: dict[str, Any] = (await client.get("/v3/async/task-result", params={"task_id": task_id})).json()
        if body["task"]["status"] in ("TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError("task did not finish")


def jobs(client: AsyncTestClient, name: str) -> list[VideoGeneration]:
    return client.app_state.scheduler.engine(name).jobs  # type: ignore[attr-defined,no-any-return]


def wan_t2v(**fields: Any) -> dict[str, Any]:
    return {"model_name": "wan2.1-t2v", "width": 832, "height": 480, "seed": 4, "prompt": "a fox", **fields}


def wan_i2v(**fields: Any) -> dict[str, Any]:
    image = "data:image/png;base64," + png((200, 100))
    return {**wan_t2v(model_name="wan2.1-i2v", width=480, height=832), "image_url": image, **fields}


def hunyuan(**fields: Any) -> dict[str, Any]:
    body = {"model_name": "hunyuan-video-fast", "width": 640, "height": 480, "seed": 2, "steps": 2, "prompt": "a"}
    return {**body, **fields}


async def test_wan_t2v_runs_five_seconds_with_the_pages_defaults(client: AsyncTestClient) -> None:
    submitted = await client.post("/v3/async/wan-t2v", json=wan_t2v(negative_prompt="blur", flow_shift=3))
    assert submitted.status_code == 200, submitted.text
    result = await poll(client, submitted.json()["task_id"])
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED", result["task"]["reason"]
    assert result["task"]["task_type"] == "TXT_TO_VIDEO" and result["extra"]["seed"] == "4"
    [job] = jobs(client, "my-wan")
    assert (job.steps, job.guidance_scale, job.flow_shift, job.negative_prompt) == (30, 5.0, 3.0, "blur")
    assert (job.frame_count, job.width, job.height) == (21, 832, 480)  # 5 s at 4 fps: 20, nearest 4k+1
    data, _ = await download(client, result["videos"][0]["video_url"])
    assert probe(data)[1:] == (21, (832, 480), 4.0)


async def test_wan_i2v_keeps_the_image_aspect_at_the_asked_area(client: AsyncTestClient) -> None:
    submitted = await client.post("/v3/async/wan-i2v", json=wan_i2v(prompt="it moves"))
    assert submitted.status_code == 200, submitted.text
    result = await poll(client, submitted.json()["task_id"])
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED", result["task"]["reason"]
    [job] = jobs(client, "my-wan-i2v")
    # A 2:1 image at about 480 x 832 pixels, in multiples of 16.
    assert (job.width, job.height) == (880, 432)
    assert (job.image_prompt, job.num_frames, job.fps) == ("it moves", 21, 4)


async def test_hunyuan_video_fast_takes_its_frames(client: AsyncTestClient) -> None:
    submitted = await client.post("/v3/async/hunyuan-video-fast", json=hunyuan(frames=89))
    assert submitted.status_code == 200, submitted.text
    result = await poll(client, submitted.json()["task_id"])
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED", result["task"]["reason"]
    [job] = jobs(client, "my-hunyuan")
    assert (job.frame_count, job.steps, job.guidance_scale) == (89, 2, 6.0)


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("wan-t2v", wan_t2v(width=640), 400, "width"),  # not one of the page's widths
        ("wan-t2v", wan_t2v(height=720), 400, "height"),  # 832x720 is no documented pair
        ("wan-t2v", wan_t2v(steps=41), 400, "steps"),
        ("wan-t2v", wan_t2v(guidance_scale=11), 400, "guidance_scale"),
        ("wan-t2v", wan_t2v(flow_shift=0.5), 400, "flow_shift"),
        ("wan-t2v", wan_t2v(prompt=""), 400, "prompt"),
        ("wan-t2v", {k: v for k, v in wan_t2v().items() if k != "seed"}, 400, "seed"),
        ("wan-t2v", wan_t2v(loras=[{"path": "https://example.com/x.safetensors", "scale": 1}]), 400, "loras"),
        ("wan-t2v", wan_t2v(model_name="ltx-video"), 400, "model_name"),  # another family
        ("wan-t2v", wan_t2v(model_name="wan2.1-i2v"), 400, "model_name"),  # another mode
        ("wan-t2v", wan_t2v(model_name="nope"), 404, None),
        ("wan-i2v", wan_i2v(enable_safety_checker=True), 400, "enable_safety_checker"),
        ("wan-i2v", wan_i2v(image_url="not an image"), 400, "image_url"),
        ("hunyuan-video-fast", hunyuan(frames=86), 400, "frames"),  # in range, not 4k+1
        ("hunyuan-video-fast", hunyuan(frames=130), 400, "frames"),
        ("hunyuan-video-fast", hunyuan(steps=1), 400, "steps"),
        ("hunyuan-video-fast", hunyuan(width=832, height=480), 400, "width"),
    ],
)
async def test_refusals_name_the_field(
    client: AsyncTestClient, path: str, body: dict[str, Any], status: int, param: str | None
) -> None:
    response = await client.post(f"/v3/async/{path}", json=body)
    assert response.status_code == status, response.text
    if param is not None:
        assert response.json()["metadata"]["param"] == param, response.text
    assert await client.app_state.task_store.next_queued(10) == []  # type: ignore[attr-defined]
