"""The Files and Batch API's objects, as the openai SDK parses them (openai/types/file_object.py,
batch.py): files with purpose "batch", batches over one JSONL input file, their output lines."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

# OpenAI's statuses (the SDK's Literal). Novita's upper-case names are the same states:
# VALIDATING, PROGRESS (in_progress and finalizing), COMPLETED, FAILED, EXPIRED, CANCELLING, CANCELLED.
BatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]
BatchEndpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank"]
FilePurpose = Literal["batch", "batch_output"]


class FileUploadRequest(msgspec.Struct, kw_only=True):
    """The multipart form of POST /files."""

    file: Annotated[bytes, msgspec.Meta(description="The JSONL file part, one request per line.")]
    # Only "batch": this server keeps files for batches (refused with a 400 otherwise).
    purpose: str


class FileObject(msgspec.Struct, kw_only=True):
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: FilePurpose
    object: Literal["file"] = "file"
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileList(msgspec.Struct, kw_only=True):
    data: list[FileObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None
    object: Literal["list"] = "list"


class FileDeleted(msgspec.Struct, kw_only=True):
    id: str
    deleted: bool = True
    object: Literal["file"] = "file"


class BatchCreateRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    input_file_id: str
    endpoint: BatchEndpoint
    # "24h" (OpenAI's only value) or "48h" (Novita's fixed window); see README.
    completion_window: str = "24h"
    # OpenAI's limits: 16 pairs, keys of 64 characters, values of 512.
    metadata: dict[str, str] | None = None
    output_expires_after: Any = None


class BatchRequestCounts(msgspec.Struct, kw_only=True):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchError(msgspec.Struct, kw_only=True, omit_defaults=True):
    code: str
    message: str
    line: int | None = None
    param: str | None = None


class BatchErrors(msgspec.Struct, kw_only=True):
    data: list[BatchError]
    object: Literal["list"] = "list"


class Batch(msgspec.Struct, kw_only=True):
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: BatchStatus
    created_at: int
    object: Literal["batch"] = "batch"
    errors: BatchErrors | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: BatchRequestCounts = msgspec.field(default_factory=BatchRequestCounts)
    metadata: dict[str, str] | None = None


class BatchList(msgspec.Struct, kw_only=True):
    data: list[Batch]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None
    object: Literal["list"] = "list"


class BatchInputLine(msgspec.Struct, kw_only=True):
    """One line of a batch input file: a request to ``url`` (the batch's endpoint)."""

    custom_id: str
    method: str = "POST"
    url: str = ""
    body: dict[str, Any]


class LineResponse(msgspec.Struct, kw_only=True):
    status_code: int
    request_id: str
    body: Any


class LineError(msgspec.Struct, kw_only=True):
    code: str
    message: str


class BatchOutputLine(msgspec.Struct, kw_only=True):
    """One line of an output or error file."""

    id: str
    custom_id: str | None
    response: LineResponse | None
    error: LineError | None
