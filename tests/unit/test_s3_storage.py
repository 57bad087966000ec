"""extra.custom_storage.aws_s3: validation, key layout, and uploads to a local S3-compatible server."""

from __future__ import annotations

import asyncio
import base64
import io
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from PIL import Image

from schemas.errors import ApiError, ErrorCode
from schemas.v3.common import AwsS3Storage, CustomStorage
from server.app import create_app
from server.settings import S3Settings
from server.settings_loading import SettingsError, load_settings
from server.storage.local import LocalStorage
from server.storage.s3 import S3Uploader, bucket_allowed, check_aws_s3, object_key
from server.tasks.models import OutputFile, S3Object, Task, TaskType
from tests.fakes import FAKE_SPECS, FAKE_UPSCALER_SPEC
from tests.s3_server import LocalS3, local_s3
from tests.unit.conftest import make_state

TASK_ID = "0b7f6c1e-3a52-4c4e-9d2a-5f1f0c0e9a11"
REQUEST = {"model_name": "fake-sd", "prompt": "a red barn", "width": 128, "height": 128, "steps": 2, "seed": 7}


def _spec(**changes: Any) -> AwsS3Storage:
    return AwsS3Storage(**{"region": "us-east-1", "bucket": "my-bucket", "path": "outputs", **changes})


def _bucket() -> str:
    return f"bucket-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def s3() -> Iterator[LocalS3]:
    with local_s3() as server:
        yield server


@pytest.fixture
def no_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """boto3's default chain finds nothing: no variables, no files, no instance metadata."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize("region", ["us-east-1", "ap-southeast-1", "us-gov-west-1", "eu-central-2", "auto"])
@pytest.mark.parametrize("bucket", ["my-bucket", "abc", "logs.example.com", "a1-b2-c3", "x" * 63])
@pytest.mark.parametrize("path", ["outputs", "a/b/c", "/leading/and/trailing/", "", "/", "images (2024)/run-1"])
def test_well_formed_values_pass(region: str, bucket: str, path: str) -> None:
    check_aws_s3(_spec(region=region, bucket=bucket, path=path))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("region", ""),
        ("region", "US-EAST-1"),
        ("region", "us_east_1"),
        ("region", "us-east-1.evil.com"),
        ("region", "us-east-1/"),
        ("region", "-us-east-1"),
        ("region", "r" * 33),
        ("bucket", ""),
        ("bucket", "ab"),
        ("bucket", "x" * 64),
        ("bucket", "My-Bucket"),
        ("bucket", "my_bucket"),
        ("bucket", "-bucket"),
        ("bucket", "bucket-"),
        ("bucket", "my..bucket"),
        ("bucket", "192.168.5.4"),
        ("bucket", "xn--bucket"),
        ("bucket", "sthree-bucket"),
        ("bucket", "bucket-s3alias"),
        ("bucket", "bucket--ol-s3"),
        ("bucket", "bucket/evil"),
        ("path", "a//b"),
        ("path", "a/../b"),
        ("path", "./a"),
        ("path", "a\\b"),
        ("path", "a\nb"),
        ("path", "a#b"),
        ("path", "x" * 901),
    ],
)
def test_malformed_values_are_refused_naming_the_field(field: str, value: str) -> None:
    with pytest.raises(ApiError) as caught:
        check_aws_s3(_spec(**{field: value}))
    assert caught.value.code is ErrorCode.INVALID_REQUEST_BODY
    assert caught.value.param == f"extra.custom_storage.aws_s3.{field}"


def test_key_layout() -> None:
    assert object_key(_spec(path="outputs"), TASK_ID, "0.png") == f"outputs/{TASK_ID}/0.png"
    assert object_key(_spec(path="/a/b/"), TASK_ID, "1.png") == f"a/b/{TASK_ID}/1.png"
    assert object_key(_spec(path=""), TASK_ID, "0.mp4") == f"{TASK_ID}/0.mp4"
    direct = _spec(path="outputs/today", save_to_path_directly=True)
    assert object_key(direct, TASK_ID, "0.png") == f"outputs/today/{TASK_ID}-0.png"
    assert object_key(_spec(path="/", save_to_path_directly=True), TASK_ID, "0.wav") == f"{TASK_ID}-0.wav"


def test_settings_from_the_environment() -> None:
    settings = load_settings(
        environ={
            "OMNISERVE_S3__ENDPOINT_URL": "http://minio:9000",
            "OMNISERVE_S3__ADDRESSING_STYLE": "path",
            "OMNISERVE_S3__MAX_ATTEMPTS": "5",
        }
    )
    assert settings.s3.endpoint_url == "http://minio:9000"
    assert settings.s3.addressing_style == "path"
    assert settings.s3.max_attempts == 5
    with pytest.raises(SettingsError):
        load_settings(environ={"OMNISERVE_S3__ACCESS_KEY_ID": "only-the-id"})
    with pytest.raises(SettingsError):
        load_settings(environ={"OMNISERVE_S3__ADDRESSING_STYLE": "sideways"})


# --- the uploader against a local S3-compatible server ------------------------------------


def _uploader(tmp_path: Path, s3: LocalS3) -> S3Uploader:
    storage = LocalStorage(tmp_path / "outputs", b"k" * 32)
    return S3Uploader(msgspec.convert(s3.settings(), S3Settings), storage)


def _task(spec: AwsS3Storage | None) -> Task:
    extra: dict[str, Any] = {"custom_storage": {"aws_s3": msgspec.to_builtins(spec)}} if spec else {}
    return Task(
        task_type=TaskType.TXT_TO_IMG,
        model="fake-sd",
        request=msgspec.json.encode({"extra": extra, "request": REQUEST}),
        task_id=TASK_ID,
    )


async def test_every_output_kind_is_uploaded_with_its_content_type(tmp_path: Path, s3: LocalS3) -> None:
    uploader = _uploader(tmp_path, s3)
    bucket = _bucket()
    s3.create_bucket(bucket, region="eu-west-1")
    files = {"0.png": ("image", b"\x89PNG fake"), "0.mp4": ("video", b"mp4 bytes"), "0.wav": ("audio", b"RIFF wav")}
    outputs = []
    for name, (kind, data) in files.items():
        uploader.storage.put(f"{TASK_ID}/{name}", data)
        outputs.append(OutputFile(kind=kind, key=f"{TASK_ID}/{name}", media_type=name.split(".")[1]))
    # A flat body (as txt2video and img2video send) carries `extra` at the top level, too.
    flat = Task(
        task_type=TaskType.TXT_TO_VIDEO,
        model="m",
        request=msgspec.json.encode(
            {
                "model_name": "m",
                "extra": {"custom_storage": {"aws_s3": {"region": "eu-west-1", "bucket": bucket, "path": "p/q"}}},
            }
        ),
        task_id=TASK_ID,
    )
    uploaded = await uploader.upload(flat, outputs)

    client = s3.client("eu-west-1")
    expected_types = {"0.png": "image/png", "0.mp4": "video/mp4", "0.wav": "audio/wav"}
    for output, (name, (_, data)) in zip(uploaded, files.items(), strict=True):
        assert output.s3 is not None
        assert (output.s3.bucket, output.s3.key, output.s3.region) == (bucket, f"p/q/{TASK_ID}/{name}", "eu-west-1")
        stored = client.get_object(Bucket=bucket, Key=output.s3.key)
        assert stored["Body"].read() == data
        assert stored["ContentType"] == expected_types[name]
        url = uploader.presigned_url(output.s3, 600)
        assert url is not None and "X-Amz-Signature=" in url and "X-Amz-Expires=600" in url
        assert httpx.get(url).content == data
    assert [output.key for output in uploaded] == [output.key for output in outputs]  # the local copies stay


async def test_a_task_without_custom_storage_is_left_alone(tmp_path: Path, s3: LocalS3) -> None:
    outputs = [OutputFile(kind="image", key=f"{TASK_ID}/0.png", media_type="png")]
    assert await _uploader(tmp_path, s3).upload(_task(None), outputs) == outputs


async def test_a_missing_bucket_fails_with_a_reason(tmp_path: Path, s3: LocalS3) -> None:
    uploader = _uploader(tmp_path, s3)
    uploader.storage.put(f"{TASK_ID}/0.png", b"png")
    outputs = [OutputFile(kind="image", key=f"{TASK_ID}/0.png", media_type="png")]
    with pytest.raises(ApiError) as caught:
        await uploader.upload(_task(_spec(bucket="bucket-no-such-one")), outputs)
    assert caught.value.code is ErrorCode.TASK_FAILED
    assert "bucket-no-such-one" in caught.value.message and "NoSuchBucket" in caught.value.message


async def test_malformed_values_never_reach_boto3(tmp_path: Path, s3: LocalS3) -> None:
    # A submit path that did not call `check` still gets no upload to a malformed name.
    outputs = [OutputFile(kind="audio", key=f"{TASK_ID}/0.wav", media_type="wav")]
    with pytest.raises(ApiError) as caught:
        await _uploader(tmp_path, s3).upload(_task(_spec(region="evil.example.com/")), outputs)
    assert caught.value.param == "extra.custom_storage.aws_s3.region"


async def test_an_unreachable_endpoint_fails_with_a_reason(tmp_path: Path) -> None:
    closed = LocalS3(endpoint_url="http://127.0.0.1:9")  # the discard port: nothing listens
    settings = msgspec.convert({**closed.settings(), "max_attempts": 1, "connect_timeout_s": 2}, S3Settings)
    uploader = S3Uploader(settings, LocalStorage(tmp_path / "outputs", b"k" * 32))
    uploader.storage.put(f"{TASK_ID}/0.png", b"png")
    outputs = [OutputFile(kind="image", key=f"{TASK_ID}/0.png", media_type="png")]
    with pytest.raises(ApiError) as caught:
        await uploader.upload(_task(_spec()), outputs)
    assert "could not be reached" in caught.value.message
    assert "127.0.0.1" not in caught.value.message  # the operator's endpoint stays private


@pytest.mark.usefixtures("no_aws_environment")
async def test_without_credentials_submission_is_refused(tmp_path: Path) -> None:
    uploader = S3Uploader(S3Settings(allowed_buckets=["my-bucket"]), LocalStorage(tmp_path / "outputs", b"k" * 32))
    with pytest.raises(ApiError) as caught:
        await uploader.check(CustomStorage(aws_s3=_spec()))
    assert caught.value.code is ErrorCode.INVALID_REQUEST_BODY
    assert caught.value.param == "extra.custom_storage.aws_s3"
    assert "credentials" in caught.value.message
    assert uploader.presigned_url(S3Object(region="us-east-1", bucket="b", key="k"), 60) is None


# --- through the app: submit, run, upload, report ---------------------------------------


@pytest.fixture
async def s3_client(tmp_path: Path, s3: LocalS3) -> AsyncIterator[AsyncTestClient]:
    state = make_state(tmp_path, s3=s3.settings())
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        client.app_state = state  # type: ignore[attr-defined]
        yield client


async def _poll(client: AsyncTestClient, task_id: str) -> dict[str, Any]:
    for _ in range(500):
        body: dict[str, Any] = (await client.get("/v3/async/task-result", params={"task_id": task_id})).json()
        if body["task"]["status"] in ("TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"):
            return body
        await asyncio.sleep(0.01)
    raise AssertionError("task did not finish")


async def test_txt2img_outputs_land_in_the_bucket_and_the_result_links_them(
    s3_client: AsyncTestClient, s3: LocalS3
) -> None:
    bucket = _bucket()
    s3.create_bucket(bucket)
    aws_s3 = {"region": "us-east-1", "bucket": bucket, "path": "renders", "save_to_path_directly": True}
    body = {"request": {**REQUEST, "image_num": 2}, "extra": {"custom_storage": {"aws_s3": aws_s3}}}
    submitted = await s3_client.post("/v3/async/txt2img", json=body)
    assert submitted.status_code == 200, submitted.text
    task_id = submitted.json()["task_id"]
    result = await _poll(s3_client, task_id)
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED", result["task"]["reason"]
    keys = sorted(item["Key"] for item in s3.client().list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [f"renders/{task_id}-0.png", f"renders/{task_id}-1.png"]
    local = s3_client.app_state.storage  # type: ignore[attr-defined]
    for index, image in enumerate(result["images"]):
        assert image["image_url"].startswith(f"{s3.endpoint_url}/{bucket}/renders/{task_id}-{index}.png?")
        assert image["image_url_ttl"] == "3600" and image["image_type"] == "png"
        downloaded = httpx.get(image["image_url"])
        assert downloaded.status_code == 200 and downloaded.headers["content-type"] == "image/png"
        assert downloaded.content == local.open_path(f"{task_id}/{index}.png").read_bytes()


async def test_a_failed_upload_fails_the_task(s3_client: AsyncTestClient) -> None:
    aws_s3 = {"region": "us-east-1", "bucket": "bucket-that-is-missing", "path": "renders"}
    submitted = await s3_client.post(
        "/v3/async/txt2img", json={"request": REQUEST, "extra": {"custom_storage": {"aws_s3": aws_s3}}}
    )
    assert submitted.status_code == 200
    result = await _poll(s3_client, submitted.json()["task_id"])
    assert result["task"]["status"] == "TASK_STATUS_FAILED"
    assert "bucket-that-is-missing" in result["task"]["reason"] and "does not exist" in result["task"]["reason"]
    assert result["images"] == []


async def test_malformed_aws_s3_is_a_400_naming_the_field(s3_client: AsyncTestClient) -> None:
    aws_s3 = {"region": "us-east-1", "bucket": "Not_A_Bucket", "path": "renders"}
    response = await s3_client.post(
        "/v3/async/txt2img", json={"request": REQUEST, "extra": {"custom_storage": {"aws_s3": aws_s3}}}
    )
    assert response.status_code == 400
    assert response.json()["reason"] == "INVALID_REQUEST_BODY"
    assert response.json()["metadata"]["param"] == "extra.custom_storage.aws_s3.bucket"
    aws_s3.pop("path")
    missing = await s3_client.post(
        "/v3/async/txt2img", json={"request": REQUEST, "extra": {"custom_storage": {"aws_s3": aws_s3}}}
    )
    assert missing.status_code == 400 and "path" in missing.json()["message"]
    assert missing.json()["metadata"]["param"] == "extra.custom_storage.aws_s3.path"


async def test_upscale_tasks_upload_too(tmp_path: Path, s3: LocalS3) -> None:
    bucket = _bucket()
    s3.create_bucket(bucket)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(buffer, format="PNG")
    state = make_state(tmp_path, [*FAKE_SPECS, FAKE_UPSCALER_SPEC], s3=s3.settings())
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        request = {
            "model_name": "fake-upscaler",
            "image_base64": base64.b64encode(buffer.getvalue()).decode(),
            "scale_factor": 2,
        }
        bad_region = {"region": "Mars", "bucket": bucket, "path": "up"}
        refused = await client.post(
            "/v3/async/upscale", json={"request": request, "extra": {"custom_storage": {"aws_s3": bad_region}}}
        )
        assert refused.status_code == 400
        assert refused.json()["metadata"]["param"] == "extra.custom_storage.aws_s3.region"
        aws_s3 = {"region": "us-east-1", "bucket": bucket, "path": "up"}
        submitted = await client.post(
            "/v3/async/upscale",
            json={"request": request, "extra": {"response_image_type": "jpeg", "custom_storage": {"aws_s3": aws_s3}}},
        )
        assert submitted.status_code == 200, submitted.text
        task_id = submitted.json()["task_id"]
        result = await _poll(client, task_id)
        assert result["task"]["status"] == "TASK_STATUS_SUCCEED", result["task"]["reason"]
        stored = s3.client().get_object(Bucket=bucket, Key=f"up/{task_id}/0.jpeg")
        assert stored["ContentType"] == "image/jpeg"
        assert Image.open(io.BytesIO(stored["Body"].read())).size == (128, 96)
        assert (
            httpx.get(result["images"][0]["image_url"]).content
            == state.storage.open_path(f"{task_id}/0.jpeg").read_bytes()
        )


@pytest.mark.usefixtures("no_aws_environment")
async def test_a_server_without_credentials_refuses_aws_s3(tmp_path: Path) -> None:
    state = make_state(tmp_path, s3={"allowed_buckets": ["my-bucket"]})
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        aws_s3 = {"region": "us-east-1", "bucket": "my-bucket", "path": "renders"}
        response = await client.post(
            "/v3/async/txt2img", json={"request": REQUEST, "extra": {"custom_storage": {"aws_s3": aws_s3}}}
        )
        assert response.status_code == 400
        assert response.json()["metadata"]["param"] == "extra.custom_storage.aws_s3"
        assert "credentials" in response.json()["message"]


# --- which buckets and regions the server's credentials write to -------------------------


def test_bucket_patterns() -> None:
    assert bucket_allowed("bucket-abc", ["bucket-*"]) and bucket_allowed("exact", ["exact"])
    assert bucket_allowed("anything", ["*"])
    assert not bucket_allowed("bucket", ["bucket-*"]) and not bucket_allowed("exact-not", ["exact"])
    assert not bucket_allowed("anything", [])
    for bad in (["a*b"], [""]):
        with pytest.raises(ValueError, match="allowed_buckets"):
            S3Settings(allowed_buckets=bad)
    with pytest.raises(ValueError, match="allowed_regions"):
        S3Settings(allowed_regions=[])
    assert S3Settings().allowed_buckets == [] and "us-east-1" in S3Settings().allowed_regions


async def test_a_bucket_off_the_allowlist_is_a_400_and_is_never_written(
    s3_client: AsyncTestClient, s3: LocalS3
) -> None:
    victim = f"victim-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(victim)
    aws_s3 = {"region": "us-east-1", "bucket": victim, "path": "renders"}
    response = await s3_client.post(
        "/v3/async/txt2img", json={"request": REQUEST, "extra": {"custom_storage": {"aws_s3": aws_s3}}}
    )
    assert response.status_code == 400
    assert response.json()["reason"] == "INVALID_REQUEST_BODY"
    assert response.json()["metadata"]["param"] == "extra.custom_storage.aws_s3.bucket"
    assert "Contents" not in s3.client().list_objects_v2(Bucket=victim)


async def test_a_region_off_the_allowlist_is_a_400(tmp_path: Path, s3: LocalS3) -> None:
    state = make_state(tmp_path, s3={**s3.settings(), "allowed_regions": ["us-east-1"]})
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        aws_s3 = {"region": "eu-west-1", "bucket": _bucket(), "path": "renders"}
        response = await client.post(
            "/v3/async/txt2img", json={"request": REQUEST, "extra": {"custom_storage": {"aws_s3": aws_s3}}}
        )
    assert response.status_code == 400
    assert response.json()["metadata"]["param"] == "extra.custom_storage.aws_s3.region"


async def test_by_default_custom_storage_is_refused_even_with_credentials(tmp_path: Path, s3: LocalS3) -> None:
    settings = {key: value for key, value in s3.settings().items() if key != "allowed_buckets"}
    state = make_state(tmp_path, s3=settings)
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        aws_s3 = {"region": "us-east-1", "bucket": _bucket(), "path": "renders"}
        response = await client.post(
            "/v3/async/txt2img", json={"request": REQUEST, "extra": {"custom_storage": {"aws_s3": aws_s3}}}
        )
    assert response.status_code == 400
    assert response.json()["metadata"]["param"] == "extra.custom_storage.aws_s3.bucket"
    assert "not enabled" in response.json()["message"]


async def test_a_stored_task_follows_the_current_allowlist(tmp_path: Path, s3: LocalS3) -> None:
    # A task accepted before the allowlist changed (or a restart) is checked again at upload.
    victim = f"victim-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(victim)
    uploader = _uploader(tmp_path, s3)
    uploader.storage.put(f"{TASK_ID}/0.png", b"png")
    outputs = [OutputFile(kind="image", key=f"{TASK_ID}/0.png", media_type="png")]
    with pytest.raises(ApiError) as caught:
        await uploader.upload(_task(_spec(bucket=victim)), outputs)
    assert caught.value.param == "extra.custom_storage.aws_s3.bucket"
    assert "Contents" not in s3.client().list_objects_v2(Bucket=victim)


async def test_boto3_clients_are_bounded_by_the_allowed_regions(tmp_path: Path, s3: LocalS3) -> None:
    regions = ["us-east-1", "eu-west-1"]
    settings = msgspec.convert({**s3.settings(), "allowed_regions": regions}, S3Settings)
    uploader = S3Uploader(settings, LocalStorage(tmp_path / "outputs", b"k" * 32))
    for region in [*regions, "ap-south-1", "us-west-2", *regions]:
        uploader.presigned_url(S3Object(region=region, bucket="bucket-x", key="k"), 60)
    assert sorted(uploader._clients) == sorted(regions)
    assert uploader.presigned_url(S3Object(region="ap-south-1", bucket="bucket-x", key="k"), 60) is None
    with pytest.raises(ApiError) as caught:
        uploader.check_allowed(_spec(region="ap-south-1", bucket="bucket-x"))
    assert caught.value.param == "extra.custom_storage.aws_s3.region"
