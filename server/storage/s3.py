"""extra.custom_storage.aws_s3: copies of a task's outputs in the client's S3 bucket.

The client names region, bucket and path (seed 003); the endpoint and the credentials
come from the ``[s3]`` settings or boto3's default chain, never from the request. The
endpoint is chosen by the operator, and a client's values only pick a bucket and region
under it (both checked to be plain names), so the private-address guard that webhook
URLs pass (server/netguard.py) does not apply here: an S3-compatible server on a private
network is the usual setup.

The server's credentials write wherever a client points them, so the bucket must be on
``s3.allowed_buckets`` (empty by default: custom storage is refused until an operator
names buckets) and the region on ``s3.allowed_regions``; one boto3 client is kept per
allowed region, so their number is fixed by the settings, not by clients.

Uploads run after the task's executor, in the runner, so every task kind gets them. The
local copy stays the source of truth until the output cleanup removes it.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
from typing import Any

import msgspec

from engines.workpools import WorkPool, run_in
from schemas.errors import ApiError, ErrorCode
from schemas.v3.common import AwsS3Storage, CustomStorage
from server.settings import S3Settings
from server.storage.local import LocalStorage
from server.tasks.models import OutputFile, S3Object, Task
from server.validation import decode_task_body

log = logging.getLogger("omniserve.storage")

PARAM = "extra.custom_storage.aws_s3"
# SigV4 presigned URLs live at most seven days.
MAX_PRESIGN_TTL_S = 7 * 24 * 3600
# S3 keys hold at most 1024 bytes; the rest is left for "<task_id>/<name>".
MAX_PATH_BYTES = 900

# Region names as AWS and S3-compatible servers spell them: "us-east-1", "eu-central-2",
# MinIO's default, R2's "auto". They become part of a host name, so nothing else is allowed.
_REGION_RE = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_MAX_REGION_CHARS = 32
# AWS's rules for general purpose buckets.
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_BUCKET_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
# Characters AWS tells clients to avoid in keys; control characters and backslashes too.
_PATH_FORBIDDEN = set('\\{}^%`[]<>~#|"') | {chr(code) for code in range(32)} | {"\x7f"}

_CONTENT_TYPES = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "jpg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "mp4": "video/mp4",
    "webm": "video/webm",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
}

# S3 error codes a client can act on, in words; any other code is reported as it is.
_ERROR_WORDS = {
    "NoSuchBucket": "the bucket does not exist",
    "AccessDenied": "the server's credentials may not write to it",
    "InvalidAccessKeyId": "the server's credentials were refused",
    "SignatureDoesNotMatch": "the server's credentials were refused",
    "PermanentRedirect": "the bucket is in another region",
    "AuthorizationHeaderMalformed": "the bucket is in another region",
    "InvalidBucketName": "the bucket name was refused",
}


def _invalid(message: str, field: str) -> ApiError:
    return ApiError(ErrorCode.INVALID_REQUEST_BODY, message, param=f"{PARAM}.{field}")


def check_region(region: str) -> None:
    if len(region) > _MAX_REGION_CHARS or _REGION_RE.fullmatch(region) is None:
        raise _invalid(f"'{region}' is not an S3 region name such as 'us-east-1'.", "region")


def check_bucket(bucket: str) -> None:
    """AWS's naming rules for general purpose buckets."""
    problem = None
    if _BUCKET_RE.fullmatch(bucket) is None:
        problem = "3 to 63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit"
    elif ".." in bucket:
        problem = "no two adjacent dots"
    elif _is_ip_address(bucket):
        problem = "not an IP address"
    elif bucket.startswith(_BUCKET_RESERVED_PREFIXES) or bucket.endswith(_BUCKET_RESERVED_SUFFIXES):
        problem = "none of the prefixes and suffixes S3 reserves"
    if problem is not None:
        raise _invalid(f"'{bucket}' is not a valid bucket name: it needs {problem}.", "bucket")


def _is_ip_address(name: str) -> bool:
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True


def normalized_path(path: str) -> str:
    """The key prefix for ``path`` without outer slashes ("" is the bucket's root).

    Raises ApiError naming extra.custom_storage.aws_s3.path when it is not a plain key
    prefix: empty or dot segments, characters S3 tells clients to avoid, or too long.
    """
    trimmed = path.strip("/")
    if not trimmed:
        return ""
    if len(trimmed.encode()) > MAX_PATH_BYTES:
        raise _invalid(f"path must be at most {MAX_PATH_BYTES} bytes.", "path")
    if any(char in _PATH_FORBIDDEN for char in trimmed):
        raise _invalid('path holds a control character or one of \\{}^%`[]<>~#|".', "path")
    if any(segment in ("", ".", "..") for segment in trimmed.split("/")):
        raise _invalid("path must not hold empty, '.' or '..' segments.", "path")
    return trimmed


def bucket_allowed(bucket: str, patterns: list[str]) -> bool:
    """Whether ``bucket`` matches an ``s3.allowed_buckets`` entry: the same name, a prefix
    ending in "*", or "*" for any bucket."""
    return any(bucket == pattern or (pattern.endswith("*") and bucket.startswith(pattern[:-1])) for pattern in patterns)


def check_aws_s3(spec: AwsS3Storage) -> None:
    """400 INVALID_REQUEST_BODY naming the field unless region, bucket and path are well formed."""
    check_region(spec.region)
    check_bucket(spec.bucket)
    normalized_path(spec.path)


def object_key(spec: AwsS3Storage, task_id: str, name: str) -> str:
    """The key of output ``name`` in the bucket.

    Without save_to_path_directly the seed adds a directory per task:
    ``<path>/<task_id>/<name>``. With it, the object lies directly under the path, and the
    task id goes into the file name instead (``<path>/<task_id>-<name>``): outputs are
    numbered per task, so a bare name would overwrite the previous task's files.
    """
    prefix = normalized_path(spec.path)
    prefix = f"{prefix}/" if prefix else ""
    if spec.save_to_path_directly:
        return f"{prefix}{task_id}-{name}"
    return f"{prefix}{task_id}/{name}"


def content_type(name: str) -> str:
    return _CONTENT_TYPES.get(name.rsplit(".", 1)[-1].lower(), "application/octet-stream")


class _StorageExtra(msgspec.Struct):
    custom_storage: CustomStorage | None = None


class _StorageBody(msgspec.Struct):
    # Every /v3 task body, nested ({"extra", "request"}) or flat (txt2video), has `extra`.
    extra: _StorageExtra | None = None


def requested_s3(raw_request: bytes) -> AwsS3Storage | None:
    """The aws_s3 settings of a stored task body, if it asked for them."""
    body = decode_task_body(raw_request, _StorageBody)
    storage = body.extra.custom_storage if body.extra is not None else None
    return storage.aws_s3 if storage is not None else None


class UploadFailed(Exception):
    pass


class S3Uploader:
    """Uploads task outputs to the bucket a task names, and signs URLs to read them back.

    boto3 blocks, so uploads run in a worker thread. Credentials are looked up once, on
    first use: boto3's chain may ask an instance metadata service, which takes a second
    when there is none.
    """

    def __init__(self, settings: S3Settings, storage: LocalStorage) -> None:
        self.settings = settings
        self.storage = storage
        self._lock = threading.Lock()
        self._session: Any = None
        self._has_credentials: bool | None = None
        self._clients: dict[str, Any] = {}

    def check_allowed(self, spec: AwsS3Storage) -> None:
        """400 naming the field unless the bucket and region are ones this server writes to."""
        if not bucket_allowed(spec.bucket, self.settings.allowed_buckets):
            if not self.settings.allowed_buckets:
                raise _invalid("custom_storage.aws_s3 is not enabled on this server: no bucket is allowed.", "bucket")
            raise _invalid(f"'{spec.bucket}' is not a bucket this server uploads to.", "bucket")
        if spec.region not in self.settings.allowed_regions:
            raise _invalid(f"'{spec.region}' is not a region this server uploads to.", "region")

    def has_credentials(self) -> bool:
        """Whether settings or boto3's default chain give credentials. May block once."""
        with self._lock:
            if self._has_credentials is None:
                self._has_credentials = self._boto_session().get_credentials() is not None
            return self._has_credentials

    def _boto_session(self) -> Any:
        if self._session is None:
            import boto3

            self._session = boto3.session.Session(
                aws_access_key_id=self.settings.access_key_id or None,
                aws_secret_access_key=self.settings.secret_access_key or None,
                aws_session_token=self.settings.session_token or None,
            )
        return self._session

    def _client(self, region: str) -> Any:
        """One client per allowed region (signatures name the region); boto3 clients are
        thread-safe, creating them is not."""
        if region not in self.settings.allowed_regions:
            # Callers check first; this keeps the cache bounded by the settings regardless.
            raise UploadFailed(f"the region '{region}' is not allowed")
        with self._lock:
            client = self._clients.get(region)
            if client is None:
                from botocore.config import Config

                config = Config(
                    signature_version="s3v4",
                    s3={"addressing_style": self.settings.addressing_style},
                    connect_timeout=self.settings.connect_timeout_s,
                    read_timeout=self.settings.read_timeout_s,
                    retries={"mode": "standard", "max_attempts": self.settings.max_attempts},
                )
                client = self._boto_session().client(
                    "s3", region_name=region, endpoint_url=self.settings.endpoint_url or None, config=config
                )
                self._clients[region] = client
            return client

    async def check(self, custom_storage: CustomStorage) -> None:
        """At submission: 400 unless the aws_s3 values are well formed and this server can upload."""
        if custom_storage.aws_s3 is None:
            return
        check_aws_s3(custom_storage.aws_s3)
        self.check_allowed(custom_storage.aws_s3)
        if not await run_in(WorkPool.STORAGE, self.has_credentials):
            raise ApiError(
                ErrorCode.INVALID_REQUEST_BODY,
                "custom_storage.aws_s3 is not available: this server has no S3 credentials configured.",
                param=PARAM,
            )

    async def upload(self, task: Task, outputs: list[OutputFile]) -> list[OutputFile]:
        """The outputs, each with its S3 copy recorded when the task asked for aws_s3.

        Raises ApiError(TASK_FAILED) with a reason the client can read when an upload fails.
        """
        spec = requested_s3(task.request)
        if spec is None or not outputs:
            return outputs
        # Checked again here, so a submit path that skipped `check` never hands boto3 a bad
        # name, and a task accepted before the allowlists changed follows the new ones.
        check_aws_s3(spec)
        self.check_allowed(spec)
        try:
            return await run_in(WorkPool.STORAGE, self._upload_all, spec, task.task_id, outputs)
        except UploadFailed as failure:
            raise ApiError(
                ErrorCode.TASK_FAILED, f"Uploading the outputs to S3 bucket '{spec.bucket}' failed: {failure}."
            ) from None

    def _upload_all(self, spec: AwsS3Storage, task_id: str, outputs: list[OutputFile]) -> list[OutputFile]:
        from botocore.exceptions import BotoCoreError, ClientError

        if not self.has_credentials():  # accepted before a restart without credentials
            raise UploadFailed("this server has no S3 credentials configured")
        client = self._client(spec.region)
        uploaded = []
        for output in outputs:
            key = object_key(spec, task_id, output.key.rsplit("/", 1)[-1])
            path = self.storage.open_path(output.key)
            if path is None:
                raise UploadFailed("an output file was missing")
            try:
                with path.open("rb") as body:
                    client.put_object(Bucket=spec.bucket, Key=key, Body=body, ContentType=content_type(key))
            except ClientError as error:
                code = str(error.response.get("Error", {}).get("Code", "unknown"))
                # The storage server's own message may name accounts or principals: logged, not returned.
                log.warning("upload of %s to s3://%s/%s failed: %s", output.key, spec.bucket, key, error)
                raise UploadFailed(f"{_ERROR_WORDS.get(code, 'the storage server refused it')} ({code})") from None
            except BotoCoreError as error:
                log.warning("upload of %s to s3://%s/%s failed: %s", output.key, spec.bucket, key, error)
                raise UploadFailed("the storage server could not be reached") from None
            uploaded.append(
                msgspec.structs.replace(output, s3=S3Object(region=spec.region, bucket=spec.bucket, key=key))
            )
        return uploaded

    def presigned_url(self, obj: S3Object, ttl_s: int) -> str | None:
        """A signed GET URL for an uploaded output, valid ``ttl_s`` seconds; None when this
        server has no credentials or no longer allows the object's region (the caller then
        links the local copy).

        Signing is local computation and runs on the event loop. The first call after a
        restart may look credentials up, and refreshable ones (instance roles) renew
        themselves now and then; both are rare enough not to need a thread.
        """
        if not self.has_credentials() or obj.region not in self.settings.allowed_regions:
            return None
        url: str = self._client(obj.region).generate_presigned_url(
            "get_object", Params={"Bucket": obj.bucket, "Key": obj.key}, ExpiresIn=min(ttl_s, MAX_PRESIGN_TTL_S)
        )
        return url
