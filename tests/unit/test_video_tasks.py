"""/v3 txt2video and img2video, and OpenAI's /videos, through the real app, task store and runner,
with a fake video engine (random frames from the seed); the encoded files are read back with PyAV."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import msgspec
import numpy as np
import pytest
from litestar.testing import AsyncTestClient
from PIL import Image

from engines.base import ModelKind, ModelSpec, ProgressCallback, VideoGeneration, VideoMode, VideoResult
from engines.video.pipelines import ANIMATEDIFF
from server.app import build_components, create_app
from server.settings import Settings
from tests.fakes import FAKE_SPECS, fake_factory
from tests.unit.test_image_tasks import poll

TEXT_SPEC = ModelSpec(
    name="fake-animatediff",
    kind=ModelKind.VIDEO,
    engine="fake-video",
    path="-",
    options={"pipeline": ANIMATEDIFF, "fps": 4, "steps": 3, "loras": {"ok-lora": "-"}},
)
IMAGE_SPEC = ModelSpec(
    name="fake-svd",
    kind=ModelKind.VIDEO,
    engine="fake-video",
    path="-",
    options={"pipeline": "StableVideoDiffusionPipeline", "width": 96, "height": 64, "fps": 6},
)


class FakeVideoEngine:
    """Random frames drawn from the job's seed, one progress report per step."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.jobs: list[VideoGeneration] = []

    @property
    def mode(self) -> VideoMode:
        return "image-to-video" if "StableVideo" in self.spec.options["pipeline"] else "text-to-video"

    @property
    def fps(self) -> int:
        return int(self.spec.options["fps"])

    @property
    def native_size(self) -> tuple[int, int]:
        return int(self.spec.options.get("width", 512)), int(self.spec.options.get("height", 512))

    async def load(self) -> None:
        pass

    async def unload(self) -> None:
        pass

    def memory_bytes(self) -> int:
        return 0

    async def health(self) -> bool:
        return True

    async def generate(self, job: VideoGeneration, progress: ProgressCallback | None = None) -> VideoResult:
        self.jobs.append(job)
        for step in range(job.steps):
            if progress is not None:
                progress((step + 1) / job.steps)
        rng = np.random.default_rng(job.seed)
        frames = rng.integers(0, 256, (job.frame_count, job.height, job.width, 3), dtype=np.uint8)
        return VideoResult(frames=frames, seed=job.seed)


def factory(spec: ModelSpec) -> Any:
    return FakeVideoEngine(spec) if spec.engine == "fake-video" else fake_factory(spec)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[AsyncTestClient]:
    # Loopback webhook targets allowed: the test-mode webhook below points at one.
    settings = msgspec.convert({"data_dir": str(tmp_path), "tasks": {"allow_private_urls": True}}, Settings)
    state = build_components(settings, [*FAKE_SPECS, TEXT_SPEC, IMAGE_SPEC], {"fake": factory, "fake-video": factory})
    async with AsyncTestClient(create_app(state)) as test_client:
        await state.load_task  # type: ignore[misc]
        test_client.app_state = state  # type: ignore[attr-defined]
        yield test_client


def png(size: tuple[int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 90)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def txt2video(**fields: Any) -> dict[str, Any]:
    return {
        "model_name": "fake-animatediff",
        "width": 80,
        "height": 64,
        "steps": 2,
        "prompts": [{"frames": 3, "prompt": "a cat"}, {"frames": 2, "prompt": "a dog"}],
        "seed": 5,
        **fields,
    }


def img2video(**fields: Any) -> dict[str, Any]:
    return {"model_name": "fake-svd", "image_file": png((100, 70)), "frames_num": 3, "steps": 2, **fields}


async def download(client: AsyncTestClient, url: str) -> tuple[bytes, str]:
    response = await client.get(url.replace("http://testserver.local", ""))
    assert response.status_code == 200, response.text
    return response.content, response.headers["content-type"]


def probe(data: bytes) -> tuple[str, int, tuple[int, int], float]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return container.format.name, count, (stream.width, stream.height), float(stream.average_rate or 0)


def engine(client: AsyncTestClient, name: str) -> FakeVideoEngine:
    found: FakeVideoEngine = client.app_state.scheduler.engine(name)  # type: ignore[attr-defined]
    return found


async def test_txt2video_result_is_an_mp4_of_the_prompt_segments(client: AsyncTestClient) -> None:
    submitted = await client.post("/v3/async/txt2video", json=txt2video(extra={"response_video_type": "mp4"}))
    assert submitted.status_code == 200, submitted.text
    result = await poll(client, submitted.json()["task_id"])
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED", result["task"]["reason"]
    assert result["task"]["task_type"] == "TXT_TO_VIDEO"
    assert result["task"]["progress_percent"] == 100
    assert result["extra"]["seed"] == "5"
    [video] = result["videos"]
    assert video["video_type"] == "mp4" and video["video_url_ttl"] == "3600"
    data, content_type = await download(client, video["video_url"])
    assert content_type == "video/mp4"
    container, count, size, rate = probe(data)
    assert ("mp4" in container, count, size, rate) == (True, 5, (80, 64), 4.0)
    [job] = engine(client, "fake-animatediff").jobs
    assert [(p.prompt, p.frames) for p in job.prompts] == [("a cat", 3), ("a dog", 2)]


@pytest.mark.parametrize(("video_type", "content_type"), [("webm", "video/webm"), ("gif", "image/gif")])
async def test_other_containers(client: AsyncTestClient, video_type: str, content_type: str) -> None:
    submitted = await client.post("/v3/async/txt2video", json=txt2video(extra={"response_video_type": video_type}))
    result = await poll(client, submitted.json()["task_id"])
    data, served_as = await download(client, result["videos"][0]["video_url"])
    assert served_as == content_type
    container, count, size, _ = probe(data)
    assert video_type in container and (count, size) == (5, (80, 64))


async def test_img2video_crops_to_the_model_size_or_keeps_the_image_size(client: AsyncTestClient) -> None:
    cropped = await client.post("/v3/async/img2video", json=img2video())
    original = await client.post(
        "/v3/async/img2video",
        json=img2video(image_file_resize_mode="ORIGINAL_DIMENSION", frames_per_second=5),
    )
    cropped_result = await poll(client, cropped.json()["task_id"])
    assert cropped_result["task"]["task_type"] == "IMG_TO_VIDEO"
    # The input image is not echoed back in the debug info on every poll.
    echoed = json.loads(cropped_result["extra"]["debug_info"]["request_info"])
    assert echoed["image_file"].startswith("<") and echoed["frames_num"] == 3
    _, count, size, rate = probe((await download(client, cropped_result["videos"][0]["video_url"]))[0])
    assert (count, size, rate) == (3, (96, 64), 6.0)
    original_result = await poll(client, original.json()["task_id"])
    _, count, size, rate = probe((await download(client, original_result["videos"][0]["video_url"]))[0])
    assert (count, size, rate) == (3, (96, 64), 5.0)  # 100x70 rounded down to multiples of 8
    jobs = engine(client, "fake-svd").jobs
    assert [(job.width, job.height) for job in jobs] == [(96, 64), (96, 64)]
    assert jobs[1].fps == 5 and jobs[1].image is not None


async def test_img2video_original_size_rounds_down_to_multiples_of_8(client: AsyncTestClient) -> None:
    submitted = await client.post(
        "/v3/async/img2video", json=img2video(image_file=png((83, 70)), image_file_resize_mode="ORIGINAL_RESOLUTION")
    )
    result = await poll(client, submitted.json()["task_id"])
    _, _, size, _ = probe((await download(client, result["videos"][0]["video_url"]))[0])
    assert size == (80, 64)


async def test_frame_interpolation_doubles_rate_and_fills_between(client: AsyncTestClient) -> None:
    submitted = await client.post(
        "/v3/async/img2video", json=img2video(frames_num=4, frames_per_second=6, enable_frame_interpolation=True)
    )
    result = await poll(client, submitted.json()["task_id"])
    _, count, _, rate = probe((await download(client, result["videos"][0]["video_url"]))[0])
    assert (count, rate) == (7, 12.0)


async def test_progress_is_visible_while_running(client: AsyncTestClient) -> None:
    reported: list[float] = []
    fake = engine(client, "fake-animatediff")
    generate = fake.generate

    async def slow(job: VideoGeneration, progress: ProgressCallback | None = None) -> VideoResult:
        def record(fraction: float) -> None:
            reported.append(fraction)
            if progress is not None:
                progress(fraction)

        return await generate(job, record)

    fake.generate = slow  # type: ignore[method-assign]
    submitted = await client.post("/v3/async/txt2video", json=txt2video(steps=4))
    await poll(client, submitted.json()["task_id"])
    assert reported == [0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "param"),
    [
        ("txt2video", txt2video(model_name="nope"), 404, "MODEL_NOT_FOUND", None),
        ("txt2video", txt2video(model_name="fake-sd"), 400, "INVALID_REQUEST_BODY", "model_name"),
        ("txt2video", txt2video(model_name="fake-svd"), 400, "INVALID_REQUEST_BODY", "model_name"),
        ("txt2video", txt2video(prompts=[]), 400, "INVALID_REQUEST_BODY", "prompts"),
        ("txt2video", txt2video(prompts=[{"frames": 100, "prompt": "a"}] * 2), 400, "INVALID_REQUEST_BODY", "prompts"),
        ("txt2video", txt2video(prompts=[{"frames": 0, "prompt": "a"}]), 400, "INVALID_REQUEST_BODY", "prompts"),
        ("txt2video", txt2video(prompts=[{"frames": 2, "prompt": " "}]), 400, "INVALID_REQUEST_BODY", "prompts"),
        (
            "txt2video",
            txt2video(prompts=[{"frames": 2, "prompt": "a"}, {"frames": 2, "prompt": "b" * 4097}]),
            400,
            "INVALID_REQUEST_BODY",
            "prompts[1].prompt",
        ),
        ("txt2video", txt2video(negative_prompt="n" * 4097), 400, "INVALID_REQUEST_BODY", "negative_prompt"),
        ("txt2video", txt2video(width=60), 400, "INVALID_IMAGE_SIZE", "width"),
        ("txt2video", txt2video(height=2048), 400, "INVALID_IMAGE_SIZE", "height"),
        ("txt2video", txt2video(steps=0), 400, "INVALID_REQUEST_BODY", "steps"),
        ("txt2video", txt2video(steps=51), 400, "INVALID_REQUEST_BODY", "steps"),
        ("txt2video", txt2video(guidance_scale=31), 400, "INVALID_REQUEST_BODY", "guidance_scale"),
        ("txt2video", txt2video(seed=-2), 400, "INVALID_REQUEST_BODY", "seed"),
        ("txt2video", txt2video(loras=[{"model_name": "nope"}]), 400, "INVALID_REQUEST_BODY", "loras"),
        ("txt2video", txt2video(extra={"response_video_type": "avi"}), 400, "INVALID_REQUEST_BODY", None),
        ("img2video", img2video(model_name="fake-animatediff"), 400, "INVALID_REQUEST_BODY", "model_name"),
        ("img2video", img2video(frames_num=0), 400, "INVALID_REQUEST_BODY", "frames_num"),
        ("img2video", img2video(frames_num=129), 400, "INVALID_REQUEST_BODY", "frames_num"),
        ("img2video", img2video(frames_per_second=0), 400, "INVALID_REQUEST_BODY", "frames_per_second"),
        ("img2video", img2video(steps=0), 400, "INVALID_REQUEST_BODY", "steps"),
        ("img2video", img2video(motion_bucket_id=0), 400, "INVALID_REQUEST_BODY", "motion_bucket_id"),
        ("img2video", img2video(cond_aug=1.5), 400, "INVALID_REQUEST_BODY", "cond_aug"),
        ("img2video", img2video(image_file_resize_mode="STRETCH"), 400, "INVALID_REQUEST_BODY", None),
        ("img2video", img2video(image_file="not base64!"), 400, "INVALID_IMAGE_FORMAT", "image_file"),
        ("img2video", img2video(image_file=base64.b64encode(b"GIF89a...").decode()), 400, "INVALID_IMAGE_FORMAT", None),
        (
            "img2video",
            img2video(image_file=png((40, 40)), image_file_resize_mode="ORIGINAL_DIMENSION"),
            400,
            "INVALID_IMAGE_SIZE",
            "image_file",
        ),
    ],
)
async def test_bad_input_is_a_400_naming_the_param_and_leaves_nothing(
    client: AsyncTestClient, path: str, body: dict[str, Any], status: int, code: str, param: str | None
) -> None:
    response = await client.post(f"/v3/async/{path}", json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["reason"] == code
    if param is not None:
        assert error["metadata"]["param"] == param
    if code == "INVALID_REQUEST_BODY" and param is None:  # the field still shows in the message
        assert any(name in error["message"] for name in ("response_video_type", "image_file_resize_mode"))
    state = client.app_state  # type: ignore[attr-defined]
    assert await state.task_store.next_queued(10) == []
    assert not any(state.storage.root.iterdir())


async def test_webhook_test_mode_records_a_mock_result(client: AsyncTestClient) -> None:
    extra = {"webhook": {"url": "http://127.0.0.1:9/hook", "test_mode": {"enabled": True}}}
    submitted = await client.post("/v3/async/txt2video", json=txt2video(extra=extra))
    result = await poll(client, submitted.json()["task_id"])
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED" and result["videos"] == []
    assert engine(client, "fake-animatediff").jobs == []


async def openai_video(client: AsyncTestClient, video_id: str) -> dict[str, Any]:
    for _ in range(200):
        response = await client.get(f"/openai/v1/videos/{video_id}")
        assert response.status_code == 200, response.text
        video: dict[str, Any] = response.json()
        if video["status"] in ("completed", "failed"):
            return video
        await asyncio.sleep(0.01)
    raise AssertionError("video did not finish")


async def test_openai_create_retrieve_and_download(client: AsyncTestClient) -> None:
    created = await client.post(
        "/openai/v1/videos",
        files={"prompt": (None, "a fox"), "model": (None, "fake-animatediff"), "seconds": (None, "2")},
        data={"size": "80x64", "seed": "9"},
    )
    assert created.status_code == 200, created.text
    video = created.json()
    assert video["object"] == "video" and video["status"] in ("queued", "in_progress", "completed")
    assert (video["model"], video["seconds"], video["size"], video["prompt"]) == (
        "fake-animatediff",
        "2",
        "80x64",
        "a fox",
    )
    done = await openai_video(client, video["id"])
    assert done["status"] == "completed" and done["progress"] == 100
    assert done["completed_at"] >= done["created_at"] and done["expires_at"] > done["completed_at"]
    content = await client.get(f"/openai/v1/videos/{video['id']}/content")
    assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
    _, count, size, rate = probe(content.content)
    assert (count, size, rate) == (8, (80, 64), 4.0)  # 2 s at the model's 4 fps
    [job] = engine(client, "fake-animatediff").jobs
    assert (job.seed, job.steps) == (9, 3)  # the model's steps for OpenAI requests
    # The same job is a /v3 task too.
    result = await client.get("/v3/async/task-result", params={"task_id": video["id"]})
    assert result.json()["task"]["task_type"] == "TXT_TO_VIDEO"


async def test_openai_image_to_video_from_an_uploaded_reference(client: AsyncTestClient) -> None:
    image = base64.b64decode(png((96, 64)))
    created = await client.post(
        "/openai/v1/videos",
        files={"input_reference": ("ref.png", image, "image/png")},
        data={"prompt": "make it move", "seconds": "1", "size": "96x64"},
    )
    assert created.status_code == 200, created.text
    done = await openai_video(client, created.json()["id"])
    assert (done["model"], done["size"], done["seconds"]) == ("fake-svd", "96x64", "1")
    content = await client.get(f"/openai/v1/videos/{done['id']}/content")
    assert probe(content.content)[1:3] == (6, (96, 64))


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": "x", "model": "nope"}, "model"),
        ({"prompt": "x", "model": "fake-svd"}, "model"),
        ({"prompt": "x", "seconds": "soon"}, "seconds"),
        ({"prompt": "x", "seconds": "40"}, "prompt"),  # 160 frames: over the 128-frame limit
        ({"prompt": "x", "size": "big"}, "size"),
        ({"prompt": "x", "size": "60x64"}, "size"),
        ({"prompt": " "}, "prompt"),
        ({"prompt": "p" * 4097}, "prompt"),
        # Numbers float() reads but that are no clip length: no 500 from seconds x fps.
        ({"prompt": "x", "seconds": "1e308"}, "seconds"),
        ({"prompt": "x", "seconds": "inf"}, "seconds"),
        ({"prompt": "x", "seconds": "nan"}, "seconds"),
        ({"prompt": "x", "seconds": "-4"}, "seconds"),
        ({"prompt": "x", "seconds": "0"}, "seconds"),
        ({"prompt": "x", "seconds": "4\u0661"}, "seconds"),  # an Arabic-Indic digit
        ({"prompt": "x", "seconds": "99999"}, "seconds"),
        # Digits str.isdigit() takes and int() does not, or takes as other digits.
        ({"prompt": "x", "size": "\u00b2x\u00b2"}, "size"),
        ({"prompt": "x", "size": "\uff18\uff10x64"}, "size"),  # fullwidth 80
        ({"prompt": "x", "size": "80x64x8"}, "size"),
        ({"prompt": "x", "size": "99999999x64"}, "size"),
    ],
)
async def test_openai_bad_input(client: AsyncTestClient, fields: dict[str, str], param: str | None) -> None:
    response = await client.post("/openai/v1/videos", files={k: (None, v) for k, v in fields.items()})
    assert response.status_code in (400, 404), response.text
    error = response.json()["error"]
    assert error["param"] == param, error


async def test_video_pixels_are_bounded_by_the_settings(tmp_path: Path) -> None:
    limits = {"max_output_pixels": 128 * 128, "max_request_pixels": 80 * 64 * 8}
    settings = msgspec.convert({"data_dir": str(tmp_path), "limits": limits}, Settings)
    state = build_components(settings, [*FAKE_SPECS, TEXT_SPEC, IMAGE_SPEC], {"fake": factory, "fake-video": factory})
    async with AsyncTestClient(create_app(state)) as test_client:
        await state.load_task  # type: ignore[misc]
        large = await test_client.post("/v3/async/txt2video", json=txt2video(width=256, height=128))
        assert large.status_code == 400 and large.json()["metadata"]["param"] == "width", large.text
        assert large.json()["reason"] == "IMAGE_EXCEEDS_MAX_RESOLUTION"
        many = await test_client.post("/v3/async/txt2video", json=txt2video(prompts=[{"frames": 9, "prompt": "a"}]))
        assert many.status_code == 400 and many.json()["metadata"]["param"] == "prompts", many.text
        fits = await test_client.post("/v3/async/txt2video", json=txt2video(prompts=[{"frames": 8, "prompt": "a"}]))
        assert fits.status_code == 200, fits.text
        # Interpolation doubles the frames: 5 become 9.
        doubled = img2video(frames_num=5, enable_frame_interpolation=True, image_file=png((80, 64)))
        doubled["image_file_resize_mode"] = "ORIGINAL_DIMENSION"
        refused = await test_client.post("/v3/async/img2video", json=doubled)
        assert refused.status_code == 400 and refused.json()["metadata"]["param"] == "frames_num", refused.text
        openai = await test_client.post(
            "/openai/v1/videos", files={"prompt": (None, "x"), "seconds": (None, "3"), "size": (None, "80x64")}
        )
        # 3 s at 4 fps: 12 frames. The frame count of a text-to-video job is the prompt's, as OpenAI
        # names it (the same param as for too many frames).
        assert openai.status_code == 400 and openai.json()["error"]["param"] == "prompt", openai.text


async def test_openai_reference_must_have_the_size(client: AsyncTestClient) -> None:
    response = await client.post(
        "/openai/v1/videos",
        files={"input_reference": ("ref.png", base64.b64decode(png((96, 64))), "image/png")},
        data={"prompt": "x", "size": "64x64"},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "input_reference"


async def test_openai_unknown_and_unfinished_videos(client: AsyncTestClient) -> None:
    missing = await client.get("/openai/v1/videos/no-such-video")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "TASK_NOT_FOUND"
    assert (await client.get("/openai/v1/videos/no-such-video/content")).status_code == 404
    variant = await client.get("/openai/v1/videos/no-such-video/content", params={"variant": "thumbnail"})
    assert variant.status_code == 400 and variant.json()["error"]["param"] == "variant"


async def test_routes_have_their_operation_ids(client: AsyncTestClient) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    operations = {
        (path, method): operation["operationId"]
        for path, item in paths.items()
        if "video" in path
        for method, operation in item.items()
    }
    assert operations == {
        ("/v1/videos", "post"): "createVideo",
        ("/v1/videos/{video_id}", "get"): "getVideo",
        ("/v1/videos/{video_id}/content", "get"): "retrieveVideoContent",
        ("/openai/v1/videos", "post"): "openaiCreateVideo",
        ("/openai/v1/videos/{video_id}", "get"): "openaiGetVideo",
        ("/openai/v1/videos/{video_id}/content", "get"): "openaiRetrieveVideoContent",
        ("/v3/async/txt2video", "post"): "txt2video",
        ("/v3/async/img2video", "post"): "img2video",
        ("/v3/async/hunyuan-video-fast", "post"): "hunyuan_video_fast",
    }
