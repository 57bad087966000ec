"""/v3 image tasks through the real app, task store and runner, with a fake image engine."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
from litestar.testing import AsyncTestClient

from server.app import create_app
from server.tasks.models import Task, TaskStatus, TaskType
from tests.unit.conftest import make_state

REQUEST = {"model_name": "fake-sd", "prompt": "a red barn", "width": 128, "height": 128, "steps": 3, "seed": 7}


async def poll(client: AsyncTestClient, task_id: str) -> dict[str, Any]:
    for _ in range(200):
        response = await client.get("/v3/async/task-result", params={"task_id": task_id})
        body: dict[str, Any] = response.json()
        if body["task"]["status"] in ("TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"):
            return body
        await asyncio.sleep(0.01)
    raise AssertionError("task did not finish")


async def test_submit_poll_and_download(client: AsyncTestClient) -> None:
    body = {"request": {**REQUEST, "image_num": 2}, "extra": {"response_image_type": "webp"}}
    submitted = await client.post("/v3/async/txt2img", json=body)
    assert submitted.status_code == 200
    result = await poll(client, submitted.json()["task_id"])
    assert set(result) == {"extra", "task", "images", "videos", "audios"}
    assert result["task"]["task_type"] == "TXT_TO_IMG"
    assert result["task"]["progress_percent"] == 100
    assert result["extra"]["seed"] == "7"
    assert len(result["images"]) == 2
    image = result["images"][0]
    assert image["image_type"] == "webp" and image["image_url_ttl"] == "3600"
    downloaded = await client.get(image["image_url"].replace("http://testserver.local", ""))
    assert downloaded.status_code == 200
    assert downloaded.headers["content-type"] == "image/webp"
    assert downloaded.content[:4] == b"RIFF"


async def test_validation_codes(client: AsyncTestClient) -> None:
    cases = [
        ({"width": 100}, 400, "INVALID_IMAGE_SIZE", "request.width"),
        ({"height": 4096}, 400, "INVALID_IMAGE_SIZE", "request.height"),
        ({"image_num": 9}, 400, "INVALID_REQUEST_BODY", "request.image_num"),
        ({"steps": 0}, 400, "INVALID_REQUEST_BODY", "request.steps"),
        ({"loras": [{"model_name": "nope"}]}, 400, "INVALID_REQUEST_BODY", "request.loras"),
        (
            {"hires_fix": {"target_width": 100, "target_height": 256}},
            400,
            "INVALID_IMAGE_SIZE",
            "request.hires_fix.target_width",
        ),
        ({"refiner": {"switch_at": 0.8}}, 400, "INVALID_REQUEST_BODY", "request.refiner"),
        ({"sd_vae": "no-such-vae"}, 400, "INVALID_REQUEST_BODY", "request.sd_vae"),
        ({"model_name": "fake-chat"}, 400, "INVALID_REQUEST_BODY", "request.model_name"),
    ]
    for change, status, reason, param in cases:
        response = await client.post("/v3/async/txt2img", json={"request": {**REQUEST, **change}})
        assert response.status_code == status, change
        assert response.json()["reason"] == reason, change
        assert response.json()["metadata"]["param"] == param, change


async def test_webhook_to_a_private_address_is_refused(client: AsyncTestClient) -> None:
    body = {"request": REQUEST, "extra": {"webhook": {"url": "http://127.0.0.1:9/hook"}}}
    response = await client.post("/v3/async/txt2img", json=body)
    assert response.status_code == 400
    assert response.json()["metadata"]["param"] == "extra.webhook.url"


async def test_other_keys_cannot_see_a_task(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    _, alice = state.keystore.create("alice")
    _, bob = state.keystore.create("bob")
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        submitted = await client.post(
            "/v3/async/txt2img", json={"request": REQUEST}, headers={"Authorization": f"Bearer {alice}"}
        )
        task_id = submitted.json()["task_id"]
        as_bob = await client.get(
            "/v3/async/task-result", params={"task_id": task_id}, headers={"Authorization": f"Bearer {bob}"}
        )
        assert as_bob.status_code == 404


async def test_restart_fails_running_tasks_and_runs_queued_ones(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    body = msgspec.json.encode({"request": REQUEST})
    running = Task(task_type=TaskType.TXT_TO_IMG, model="fake-sd", request=body, seed=1)
    queued = Task(task_type=TaskType.TXT_TO_IMG, model="fake-sd", request=body, seed=2)
    await state.task_store.create(running)
    await state.task_store.mark_processing(running.task_id, 1)
    await state.task_store.create(queued)
    async with AsyncTestClient(create_app(state)) as client:
        failed = await poll(client, running.task_id)
        assert failed["task"]["status"] == TaskStatus.FAILED
        assert "restarted" in failed["task"]["reason"]
        finished = await poll(client, queued.task_id)
        assert finished["task"]["status"] == TaskStatus.SUCCEED
        assert finished["extra"]["seed"] == "2"


async def test_model_listing_route_reads_novita_query_names(client: AsyncTestClient) -> None:
    response = await client.get("/v3/model", params={"filter.type": "lora", "pagination.limit": "10"})
    assert response.status_code == 200
    assert [model["sd_name_in_api"] for model in response.json()["models"]] == ["ok-lora"]
    bad = await client.get("/v3/model", params={"pagination.cursor": "nope"})
    assert bad.status_code == 400 and bad.json()["metadata"]["param"] == "pagination.cursor"


async def test_img2img_and_inpainting_tasks(client: AsyncTestClient) -> None:
    import base64
    import io

    from PIL import Image

    def png(mode: str, size: tuple[int, int]) -> str:
        buffer = io.BytesIO()
        Image.new(mode, size).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    img2img = {"request": {**REQUEST, "image_base64": png("RGB", (200, 130)), "width": None, "height": None}}
    img2img["request"].pop("width")
    img2img["request"].pop("height")
    submitted = await client.post("/v3/async/img2img", json=img2img)
    assert submitted.status_code == 200, submitted.text
    result = await poll(client, submitted.json()["task_id"])
    assert result["task"]["task_type"] == "IMG_TO_IMG" and result["task"]["status"] == "TASK_STATUS_SUCCEED"
    assert "<" in json_of(result["extra"]["debug_info"]["request_info"])["request"]["image_base64"]
    inpainting = {
        "request": {
            **REQUEST,
            "image_base64": png("RGB", (128, 128)),
            "mask_image_base64": png("L", (128, 128)),
            "inpainting_mask_invert": 1,
        }
    }
    submitted = await client.post("/v3/async/inpainting", json=inpainting)
    assert submitted.status_code == 200, submitted.text
    assert (await poll(client, submitted.json()["task_id"]))["task"]["task_type"] == "INPAINTING"
    broken = await client.post("/v3/async/img2img", json={"request": {**REQUEST, "image_base64": "bm90IGFuIGltYWdl"}})
    assert broken.status_code == 400 and broken.json()["reason"] == "INVALID_IMAGE_FORMAT"


def json_of(text: str) -> Any:
    import json

    return json.loads(text)


async def test_explicit_nulls_mean_defaults(client: AsyncTestClient) -> None:
    # novita-client serialises every field, sending null for options the caller left out.
    body = {
        "request": {**REQUEST, "steps": None, "strength": None, "seed": None, "negative_prompt": None},
        "extra": {"webhook": None, "custom_storage": {}, "enterprise_plan": {}},
    }
    submitted = await client.post("/v3/async/txt2img", json=body)
    assert submitted.status_code == 200, submitted.text
    result = await poll(client, submitted.json()["task_id"])
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED"
    assert int(result["extra"]["seed"]) >= 0
