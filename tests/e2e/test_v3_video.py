"""Novita /v3 video tasks against a running omniserve on the tiny demo models: the official
novita-client submits and polls, the files are read back with PyAV."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import av
import httpx
import pytest
from novita_client import NovitaClient
from novita_client.proto import Img2VideoResizeMode, Txt2VideoPrompt
from PIL import Image

from tests.e2e.conftest import RunningServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def novita(server: RunningServer) -> NovitaClient:
    return NovitaClient(server.api_key, base_url=server.base_url)


def probe(data: bytes) -> tuple[str, str, int, tuple[int, int]]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return container.format.name, stream.codec_context.name, count, (stream.width, stream.height)


def png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    image = Image.linear_gradient("L").convert("RGB").resize(size)
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def wait(server: RunningServer, task_id: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    for _ in range(600):
        result: dict[str, Any] = httpx.get(
            f"{server.base_url}/v3/async/task-result", params={"task_id": task_id}, headers=headers
        ).json()
        if result["task"]["status"] in ("TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"):
            return result
        time.sleep(0.2)
    raise AssertionError("task did not finish")


def test_txt2video_with_the_novita_sdk(novita: NovitaClient) -> None:
    prompts = [Txt2VideoPrompt(prompt="a cat", frames=3), Txt2VideoPrompt(prompt="a dog", frames=2)]
    submitted = novita.async_txt2video(
        "demo-animatediff", 64, 80, 2, prompts, 7.5, response_video_type="webm", negative_prompt="blurry"
    )
    result = novita.wait_for_task_v3(submitted.task_id)
    assert result.task.status.value == "TASK_STATUS_SUCCEED", result.task.reason
    assert result.task.task_type == "TXT_TO_VIDEO"
    result.download_videos()
    [video] = result.videos
    assert video.video_type == "webm"
    container, codec, count, size = probe(result.video_bytes[0])
    assert ("webm" in container, codec, count, size) == (True, "vp9", 5, (80, 64))


def test_same_seed_same_video_over_http(server: RunningServer) -> None:
    # novita-client drops `seed` from txt2video bodies, so this one goes over plain HTTP.
    headers = {"Authorization": f"Bearer {server.api_key}"}
    body = {
        "model_name": "demo-animatediff",
        "width": 64,
        "height": 64,
        "steps": 2,
        "prompts": [{"frames": 4, "prompt": "a lighthouse"}],
        "seed": 1234,
        "closed_loop": True,
        "extra": {"response_video_type": "mp4"},
    }
    files = []
    for seed in (1234, 1234, 1235):
        submitted = httpx.post(f"{server.base_url}/v3/async/txt2video", json={**body, "seed": seed}, headers=headers)
        assert submitted.status_code == 200, submitted.text
        result = wait(server, submitted.json()["task_id"])
        assert result["extra"]["seed"] == str(seed)
        files.append(httpx.get(result["videos"][0]["video_url"]).content)
    assert probe(files[0])[1:] == ("h264", 4, (64, 64))
    assert files[0] == files[1] != files[2]


def test_img2video_with_the_novita_sdk(novita: NovitaClient) -> None:
    image = Image.open(io.BytesIO(png((100, 70))))
    submitted = novita.async_img2video(
        image,
        "demo-svd",
        steps=2,
        frames_num=3,
        frames_per_second=6,
        seed=7,
        image_file_resize_mode=Img2VideoResizeMode.ORIGINAL_DIMENSION.value,
        enable_frame_interpolation=True,
        response_video_type="gif",
    )
    result = novita.wait_for_task_v3(submitted.task_id)
    assert result.task.status.value == "TASK_STATUS_SUCCEED", result.task.reason
    assert result.task.task_type == "IMG_TO_VIDEO"
    result.download_videos()
    container, _, count, size = probe(result.video_bytes[0])
    assert (container, count, size) == ("gif", 5, (96, 64))  # 3 frames and 2 blended between


def test_bad_video_input_in_the_v3_envelope(server: RunningServer) -> None:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    text = {"model_name": "demo-animatediff", "width": 64, "height": 64, "steps": 2}
    image = {"model_name": "demo-svd", "image_file": base64.b64encode(png((96, 64))).decode(), "steps": 2}
    cases: list[tuple[str, dict[str, Any], int, str | None]] = [
        ("txt2video", {**text, "prompts": [{"frames": 64, "prompt": "a"}] * 3}, 400, "prompts"),
        ("txt2video", {**text, "prompts": [{"frames": 2, "prompt": "a"}], "width": 32}, 400, "width"),
        ("txt2video", {**text, "prompts": [{"frames": 2, "prompt": "a"}], "model_name": "nope"}, 404, None),
        ("img2video", {**image, "frames_num": 129}, 400, "frames_num"),
        ("img2video", {**image, "frames_per_second": 0}, 400, "frames_per_second"),
        ("img2video", {**image, "image_file_resize_mode": "STRETCH"}, 400, "image_file_resize_mode"),
        ("img2video", {**image, "image_file": "aGVsbG8="}, 400, "image_file"),
    ]
    for path, body, status, param in cases:
        response = httpx.post(f"{server.base_url}/v3/async/{path}", json=body, headers=headers)
        assert response.status_code == status, (path, response.text)
        error = response.json()
        assert error["code"] == status
        if param is not None:
            assert error["metadata"]["param"] == param, error
