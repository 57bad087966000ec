"""extra.custom_storage.aws_s3 against a running omniserve and a local S3-compatible server."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import httpx
import pytest
from novita_client import NovitaClient

from tests.e2e.conftest import RunningServer
from tests.s3_server import LocalS3

pytestmark = pytest.mark.e2e

REQUEST = {"model_name": "demo-sd", "prompt": "a lighthouse at dusk", "width": 128, "height": 128, "steps": 2}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _auth(server: RunningServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_key}"}


def _bucket(s3: LocalS3) -> str:
    name = f"e2e-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(name, region="eu-west-1")
    return name


def _submit(server: RunningServer, aws_s3: dict[str, Any]) -> httpx.Response:
    body = {"request": REQUEST, "extra": {"response_image_type": "png", "custom_storage": {"aws_s3": aws_s3}}}
    return httpx.post(f"{server.base_url}/v3/async/txt2img", json=body, headers=_auth(server))


def _poll(server: RunningServer, task_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, Any] = httpx.get(
            f"{server.base_url}/v3/async/task-result", params={"task_id": task_id}, headers=_auth(server)
        ).json()
        if body["task"]["status"] in ("TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not finish")


def test_txt2img_outputs_are_uploaded_under_a_task_folder(server: RunningServer, s3: LocalS3) -> None:
    bucket = _bucket(s3)
    submitted = _submit(server, {"region": "eu-west-1", "bucket": bucket, "path": "renders/2024"})
    assert submitted.status_code == 200, submitted.text
    task_id = submitted.json()["task_id"]
    result = _poll(server, task_id)
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED", result["task"]["reason"]

    stored = s3.client("eu-west-1").get_object(Bucket=bucket, Key=f"renders/2024/{task_id}/0.png")
    data = stored["Body"].read()
    assert data.startswith(PNG_SIGNATURE)
    assert stored["ContentType"] == "image/png"
    image = result["images"][0]
    # The result links the object in the bucket, signed for the reported TTL.
    assert image["image_url"].startswith(f"{s3.endpoint_url}/{bucket}/renders/2024/{task_id}/0.png?")
    assert image["image_url_ttl"] == "3600" and image["image_type"] == "png"
    downloaded = httpx.get(image["image_url"])
    assert downloaded.status_code == 200
    assert downloaded.content == data


def test_save_to_path_directly_with_the_novita_sdk(server: RunningServer, s3: LocalS3) -> None:
    bucket = _bucket(s3)
    novita = NovitaClient(server.api_key, base_url=server.base_url)
    aws_s3 = {"region": "eu-west-1", "bucket": bucket, "path": "flat", "save_to_path_directly": True}
    # The SDK polls the task, then downloads every image_url: here, the signed bucket URL.
    result = novita.txt2img_v3(
        **REQUEST, image_num=2, seed=99, response_image_type="png", custom_storage={"aws_s3": aws_s3}
    )
    assert result.task.status.value == "TASK_STATUS_SUCCEED"
    task_id = result.task.task_id
    listed = s3.client("eu-west-1").list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(item["Key"] for item in listed) == [f"flat/{task_id}-0.png", f"flat/{task_id}-1.png"]
    for index, encoded in enumerate(result.images_encoded):
        stored = s3.client("eu-west-1").get_object(Bucket=bucket, Key=f"flat/{task_id}-{index}.png")
        assert base64.b64decode(encoded) == stored["Body"].read()


def test_an_upload_to_a_missing_bucket_fails_the_task(server: RunningServer) -> None:
    submitted = _submit(server, {"region": "eu-west-1", "bucket": "e2e-no-such-bucket", "path": "renders"})
    assert submitted.status_code == 200, submitted.text
    result = _poll(server, submitted.json()["task_id"])
    assert result["task"]["status"] == "TASK_STATUS_FAILED"
    assert "e2e-no-such-bucket" in result["task"]["reason"]
    assert "does not exist" in result["task"]["reason"]
    assert result["images"] == []


def test_malformed_storage_settings_are_refused(server: RunningServer) -> None:
    response = _submit(server, {"region": "eu-west-1", "bucket": "UPPER_case", "path": "renders"})
    assert response.status_code == 400
    assert response.json()["reason"] == "INVALID_REQUEST_BODY"
    assert response.json()["metadata"]["param"] == "extra.custom_storage.aws_s3.bucket"
