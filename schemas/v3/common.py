from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from schemas.limits import MAX_NSFW_DETECTION_LEVEL

TaskStatusName = Literal["TASK_STATUS_QUEUED", "TASK_STATUS_PROCESSING", "TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"]


class V3Error(msgspec.Struct, kw_only=True):
    """Novita's error envelope: ``code`` is the HTTP status, ``reason`` the ErrorCode."""

    code: int
    reason: str
    message: str
    metadata: dict[str, Any] = {}


class WebhookTestMode(msgspec.Struct, kw_only=True):
    enabled: bool = False
    return_task_status: Literal["TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"] = "TASK_STATUS_SUCCEED"


class Webhook(msgspec.Struct, kw_only=True):
    url: str
    test_mode: WebhookTestMode | None = None


class AwsS3Storage(msgspec.Struct, kw_only=True):
    region: str
    bucket: str
    path: str
    save_to_path_directly: bool = False


class CustomStorage(msgspec.Struct, kw_only=True):
    aws_s3: AwsS3Storage | None = None


class EnterprisePlan(msgspec.Struct, kw_only=True):
    enabled: bool = False


class CommonExtra(msgspec.Struct, kw_only=True):
    """The ``extra`` object every /v3 async task accepts (seed 003)."""

    response_image_type: Literal["png", "jpeg", "webp"] = "png"
    enable_nsfw_detection: bool = False
    nsfw_detection_level: Annotated[int, msgspec.Meta(ge=0, le=MAX_NSFW_DETECTION_LEVEL)] = 0
    webhook: Webhook | None = None
    custom_storage: CustomStorage | None = None
    # Accepted for compatibility; it changes nothing on a self-hosted server.
    enterprise_plan: EnterprisePlan | None = None


class TaskSubmitted(msgspec.Struct, kw_only=True):
    task_id: str
