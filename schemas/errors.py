"""One vocabulary of error codes for every route family.

Each code carries its HTTP status; the envelopes (OpenAI, Novita v3, vendor) differ only in
how they render a code, never in which code or status a failure gets.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    INVALID_REQUEST_BODY = "INVALID_REQUEST_BODY"
    MISSING_API_KEY = "MISSING_API_KEY"
    INVALID_API_KEY = "INVALID_API_KEY"
    API_NOT_FOUND = "API_NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    TASK_NOT_FOUND = "TASK_NOT_FOUND"
    # A stored response (/v1/responses) that does not exist, expired, or is another key's.
    RESPONSE_NOT_FOUND = "RESPONSE_NOT_FOUND"
    REQUEST_BODY_TOO_LARGE = "REQUEST_BODY_TOO_LARGE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
    TOKEN_LIMIT_EXCEEDED = "TOKEN_LIMIT_EXCEEDED"
    QUEUE_FULL = "QUEUE_FULL"
    BILLING_BALANCE_NOT_ENOUGH = "BILLING_BALANCE_NOT_ENOUGH"
    SERVICE_NOT_AVAILABLE = "SERVICE_NOT_AVAILABLE"
    TASK_FAILED = "TASK_FAILED"
    CREATE_TASK_FAILED = "CREATE_TASK_FAILED"
    INVALID_IMAGE_SIZE = "INVALID_IMAGE_SIZE"
    INVALID_IMAGE_FORMAT = "INVALID_IMAGE_FORMAT"
    IMAGE_FILE_EXCEEDS_MAX_SIZE = "IMAGE_FILE_EXCEEDS_MAX_SIZE"
    IMAGE_EXCEEDS_MAX_RESOLUTION = "IMAGE_EXCEEDS_MAX_RESOLUTION"
    INVALID_AUDIO_FILE = "INVALID_AUDIO_FILE"
    ACCESS_DENY = "ACCESS_DENY"
    # The key is valid but its account may not call the API (no active subscription).
    API_NOT_ALLOWED = "API_NOT_ALLOWED"
    # Admin API: the model's state does not allow the action now (requests running or waiting,
    # loading or unloading), or its device has no room beside pinned models and models in use.
    MODEL_IN_USE = "MODEL_IN_USE"
    MODEL_DOES_NOT_FIT = "MODEL_DOES_NOT_FIT"
    ENGINE_ERROR = "ENGINE_ERROR"
    UNKNOWN = "UNKNOWN"

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self]


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST_BODY: 400,
    # Novita's table lists 400 for a missing key; every client library treats 401 as
    # "authenticate first", which is what a missing key means, so omniserve answers 401.
    ErrorCode.MISSING_API_KEY: 401,
    ErrorCode.INVALID_API_KEY: 403,
    ErrorCode.API_NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.MODEL_NOT_FOUND: 404,
    ErrorCode.TASK_NOT_FOUND: 404,
    ErrorCode.RESPONSE_NOT_FOUND: 404,
    ErrorCode.REQUEST_BODY_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.RATE_LIMIT_EXCEEDED: 429,
    ErrorCode.TOKEN_LIMIT_EXCEEDED: 429,
    ErrorCode.QUEUE_FULL: 429,
    ErrorCode.BILLING_BALANCE_NOT_ENOUGH: 400,
    ErrorCode.SERVICE_NOT_AVAILABLE: 503,
    ErrorCode.TASK_FAILED: 500,
    ErrorCode.CREATE_TASK_FAILED: 500,
    ErrorCode.INVALID_IMAGE_SIZE: 400,
    ErrorCode.INVALID_IMAGE_FORMAT: 400,
    ErrorCode.IMAGE_FILE_EXCEEDS_MAX_SIZE: 400,
    ErrorCode.IMAGE_EXCEEDS_MAX_RESOLUTION: 400,
    ErrorCode.INVALID_AUDIO_FILE: 400,
    ErrorCode.ACCESS_DENY: 403,
    ErrorCode.API_NOT_ALLOWED: 403,
    ErrorCode.MODEL_IN_USE: 409,
    ErrorCode.MODEL_DOES_NOT_FIT: 409,
    ErrorCode.ENGINE_ERROR: 500,
    ErrorCode.UNKNOWN: 500,
}


class ApiError(Exception):
    """The one error type every layer raises; a handler per envelope renders it.

    ``message`` must be safe to show a client: no paths, keys or tracebacks.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        return self.code.http_status

    def __repr__(self) -> str:
        return f"ApiError({self.code.value}, {self.message!r}, param={self.param!r})"
