"""Render every failure in the envelope of the route family that was called.

One handler per envelope: ``/openai`` and ``/v1`` speak OpenAI's error body, ``/v3``
speaks Novita's, ``/api/novassium`` Novassium's, ``/api/v3`` the Stable Diffusion API's and
``/v1/messages`` Anthropic's; anything else falls back to Novita's shape. Unexpected exceptions
are logged with their traceback here and reach the client only as a generic 500.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Callable

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.exceptions.http_exceptions import MethodNotAllowedException

from engines.errors import (
    EngineError,
    InvalidJob,
    JobProblem,
    ModelDoesNotFit,
    ModelInUse,
    ModelNotFound,
    ModelNotServedHere,
    Overloaded,
    WrongModelKind,
)
from schemas.anthropic.messages import ErrorDetail as AnthropicErrorDetail
from schemas.anthropic.messages import ErrorResponse as AnthropicErrorResponse
from schemas.anthropic.messages import ErrorType as AnthropicErrorType
from schemas.errors import ApiError, ErrorCode
from schemas.openai.common import ErrorDetail, ErrorResponse
from schemas.v3.common import V3Error
from server.cluster import CLUSTER_STATE, ClusterCatalog, ModelServedElsewhere, ask_peer, cluster_refusal
from server.request_bodies import client_left_mid_body
from server.validation import validation_error as validation_error  # its home; imported from here too

log = logging.getLogger("omniserve.errors")

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}

_STATUS_CODES = {
    400: ErrorCode.INVALID_REQUEST_BODY,
    401: ErrorCode.MISSING_API_KEY,
    403: ErrorCode.INVALID_API_KEY,
    404: ErrorCode.API_NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.REQUEST_BODY_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    429: ErrorCode.RATE_LIMIT_EXCEEDED,
    503: ErrorCode.SERVICE_NOT_AVAILABLE,
}


def bad_request(message: str, param: str | None = None) -> ApiError:
    """The plain refusal of a request: 400 INVALID_REQUEST_BODY naming ``param``."""
    return ApiError(ErrorCode.INVALID_REQUEST_BODY, message, param=param)


def openai_error_body(error: ApiError) -> bytes:
    detail = ErrorDetail(
        message=error.message,
        type=_OPENAI_TYPES.get(error.status, "server_error"),
        param=error.param,
        code=error.code.value,
    )
    return msgspec.json.encode(ErrorResponse(error=detail))


def v3_error_body(error: ApiError) -> bytes:
    metadata = {"param": error.param} if error.param else {}
    return msgspec.json.encode(
        V3Error(code=error.status, reason=error.code.value, message=error.message, metadata=metadata)
    )


# Anthropic's error types. The status is the code's own (as in every family); the type says
# what the failure is, so a key that is not valid is an authentication_error although this
# server answers it with 403 (INVALID_API_KEY), as on every route.
_ANTHROPIC_CODE_TYPES: dict[ErrorCode, AnthropicErrorType] = {
    ErrorCode.MISSING_API_KEY: "authentication_error",
    ErrorCode.INVALID_API_KEY: "authentication_error",
    ErrorCode.API_NOT_ALLOWED: "permission_error",
    ErrorCode.ACCESS_DENY: "permission_error",
    ErrorCode.QUEUE_FULL: "overloaded_error",
    ErrorCode.SERVICE_NOT_AVAILABLE: "overloaded_error",
}
_ANTHROPIC_STATUS_TYPES: dict[int, AnthropicErrorType] = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def anthropic_error_body(error: ApiError) -> bytes:
    """Anthropic's envelope. It has no field for the code or the param, so the message names
    the param (as Anthropic's own messages do: ``max_tokens: Field required``)."""
    kind = _ANTHROPIC_CODE_TYPES.get(error.code) or _ANTHROPIC_STATUS_TYPES.get(error.status)
    if kind is None:
        kind = "api_error" if error.status >= 500 else "invalid_request_error"
    message = error.message
    if error.param and error.param not in message:
        message = f"{error.param}: {message}"
    return msgspec.json.encode(AnthropicErrorResponse(error=AnthropicErrorDetail(type=kind, message=message)))


# Novassium's error table: its lowercase codes, and its own messages where it gives them.
_NOVASSIUM_CODES = {
    ErrorCode.MISSING_API_KEY: ("missing_api_key", "API key is missing."),
    ErrorCode.INVALID_API_KEY: ("invalid_api_key", "Invalid API key."),
    ErrorCode.API_NOT_ALLOWED: ("no_active_subscription", "Your subscription is inactive; API access is revoked."),
    ErrorCode.RATE_LIMIT_EXCEEDED: ("rate_limit_exceeded", "Rate limit exceeded. Please try again later."),
    ErrorCode.QUEUE_FULL: ("rate_limit_exceeded", "Rate limit exceeded. Please try again later."),
    # Busy, not broken: the table's 5xx code, a message that says to come back (with Retry-After).
    ErrorCode.SERVICE_NOT_AVAILABLE: ("server_error", "The server is busy. Please try again later."),
    ErrorCode.BILLING_BALANCE_NOT_ENOUGH: ("insufficient_credits", None),
    ErrorCode.API_NOT_FOUND: ("not_found", None),
    ErrorCode.METHOD_NOT_ALLOWED: ("method_not_allowed", None),
    ErrorCode.ACCESS_DENY: ("forbidden", None),
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: ("unsupported_media_type", None),
}


def novassium_error_body(error: ApiError) -> bytes:
    if error.code in _NOVASSIUM_CODES:
        code, message = _NOVASSIUM_CODES[error.code]
    elif error.status >= 500:
        code, message = "server_error", "An unexpected error occurred on the server. Please try again."
    else:
        code, message = "missing_parameters", None
    return msgspec.json.encode({"success": False, "message": message or error.message, "code": code})


SDAPI_KEY_TIP = (
    "1. Make sure Content-Type: application/json is passed in the header. 2. Make sure you are executing the "
    "POST request with the correct JSON. 3. Make sure the JSON is error free, use jsonlint to validate the json "
    "array. 4.you have a valid API key."
)


def sdapi_error_body(error: ApiError) -> bytes:
    """The Stable Diffusion API's bodies (seed 004): field errors as ``{field: [message]}``."""
    body: dict[str, object] = {"status": "error", "message": error.message}
    if error.code in (ErrorCode.MISSING_API_KEY, ErrorCode.INVALID_API_KEY):
        body.update(message="Invalid Api Key", tip=SDAPI_KEY_TIP)
    elif error.code is ErrorCode.MODEL_NOT_FOUND:
        body["message"] = "Model id not found"
    elif error.code in (ErrorCode.RATE_LIMIT_EXCEEDED, ErrorCode.QUEUE_FULL):
        body.update(message="Rate limit exceeded", tips=error.message)
    elif error.param and error.status == 400:
        body["message"] = {error.param.removeprefix("request."): [error.message]}
    return msgspec.json.encode(body)


def is_anthropic_path(path: str) -> bool:
    """Anthropic's Messages API, served beside OpenAI's routes under /v1."""
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def is_openai_path(path: str) -> bool:
    return path.startswith(("/openai/", "/v1/")) or path in ("/openai", "/v1")


class ErrorFamily(enum.StrEnum):
    """The error envelopes, one per API family."""

    OPENAI = "openai"
    NOVITA = "novita"
    NOVASSIUM = "novassium"
    SDAPI = "sdapi"
    ANTHROPIC = "anthropic"


def error_family(path: str) -> ErrorFamily:
    if is_anthropic_path(path):
        return ErrorFamily.ANTHROPIC
    if is_openai_path(path):
        return ErrorFamily.OPENAI
    if path.startswith("/api/novassium/"):
        return ErrorFamily.NOVASSIUM
    if path.startswith("/api/v3/"):
        return ErrorFamily.SDAPI
    return ErrorFamily.NOVITA


_BODIES: dict[ErrorFamily, Callable[[ApiError], bytes]] = {
    ErrorFamily.OPENAI: openai_error_body,
    ErrorFamily.NOVITA: v3_error_body,
    ErrorFamily.NOVASSIUM: novassium_error_body,
    ErrorFamily.SDAPI: sdapi_error_body,
    ErrorFamily.ANTHROPIC: anthropic_error_body,
}


def _body_for(path: str) -> Callable[[ApiError], bytes]:
    return _BODIES[error_family(path)]


_PROBLEM_CODES = {
    JobProblem.INVALID: ErrorCode.INVALID_REQUEST_BODY,
    JobProblem.IMAGE_FORMAT: ErrorCode.INVALID_IMAGE_FORMAT,
    JobProblem.AUDIO_FILE: ErrorCode.INVALID_AUDIO_FILE,
}


def engine_api_error(exc: EngineError, names: Callable[[str], str] | None = None) -> ApiError:
    """The one mapping from an engine's domain error onto the API vocabulary.

    ``names`` turns an engine-side field (a job struct's field name) into the calling API's
    wire name for it (each adapter's `WireNames`); without it, the field is the param.
    """
    field = exc.field
    param = field if field is None or names is None else names(field)
    retry_after: float | None = None
    if isinstance(exc, ModelNotServedHere):
        # Where it runs is written by the error handler, which has the cluster catalog.
        return ModelServedElsewhere(exc.model, param)
    if isinstance(exc, ModelNotFound):
        code = ErrorCode.MODEL_NOT_FOUND
    elif isinstance(exc, WrongModelKind):
        code = ErrorCode.INVALID_REQUEST_BODY
    elif isinstance(exc, InvalidJob):
        code = _PROBLEM_CODES[exc.problem]
    elif isinstance(exc, ModelInUse):
        code = ErrorCode.MODEL_IN_USE
    elif isinstance(exc, ModelDoesNotFit):
        code = ErrorCode.MODEL_DOES_NOT_FIT
    elif isinstance(exc, Overloaded):
        code = ErrorCode.QUEUE_FULL if exc.queue_full else ErrorCode.SERVICE_NOT_AVAILABLE
        retry_after = exc.retry_after
    else:  # EngineFailure, and any failure this table does not know: the engine failed
        code = ErrorCode.ENGINE_ERROR
    return ApiError(code, exc.message, param=param, retry_after=retry_after)


def as_api_error(exc: Exception) -> ApiError:
    """Map any exception onto the vocabulary; unknown ones become a generic 500."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, EngineError):
        return engine_api_error(exc)
    if isinstance(exc, NotFoundException):
        return ApiError(ErrorCode.API_NOT_FOUND, "No such API route.")
    if isinstance(exc, MethodNotAllowedException):
        return ApiError(ErrorCode.METHOD_NOT_ALLOWED, "Method not allowed on this route.")
    if isinstance(exc, ValidationException):
        return _from_validation(exc)
    if isinstance(exc, HTTPException):
        code = _STATUS_CODES.get(exc.status_code, ErrorCode.INVALID_REQUEST_BODY)
        if exc.status_code == 413:
            return ApiError(code, "Request body is larger than the server accepts.")
        if exc.status_code >= 500:
            return ApiError(ErrorCode.UNKNOWN, "Internal server error.")
        # Litestar's own messages (e.g. bad multipart, bad query parameter) carry no
        # secrets; its ``extra`` may hold values, so it is not passed on.
        return ApiError(code, str(exc.detail))
    return ApiError(ErrorCode.UNKNOWN, "Internal server error.")


def _from_validation(exc: ValidationException) -> ApiError:
    """Litestar's body/parameter validation failure, naming the offending field."""
    details = exc.extra if isinstance(exc.extra, list) else []
    first = details[0] if details and isinstance(details[0], dict) else {}
    param = first.get("key") or None
    reason = str(first.get("message") or exc.detail)
    missing = re.search(r"missing required field `([^`]+)`", reason)
    if missing:
        # Litestar names the whole body ("data"); the client needs the absent field.
        param = missing.group(1) if param in (None, "data") else f"{param}.{missing.group(1)}"
    if param:
        param = param.removeprefix("$.") if isinstance(param, str) else str(param)
        return ApiError(ErrorCode.INVALID_REQUEST_BODY, f"Invalid value for '{param}': {reason}", param=param)
    return ApiError(ErrorCode.INVALID_REQUEST_BODY, f"Invalid request: {reason}")


def retry_after_headers(error: ApiError) -> dict[str, str]:
    """Retry-After (whole seconds) and OpenAI's retry-after-ms, when the error has a delay."""
    if error.retry_after is None:
        return {}
    return {"Retry-After": str(max(1, round(error.retry_after))), "retry-after-ms": str(int(error.retry_after * 1000))}


def error_body(path: str, error: ApiError) -> bytes:
    """The error as the body of the family that `path` belongs to."""
    return _body_for(path)(error)


def error_response(path: str, error: ApiError, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(
        content=error_body(path, error),
        status_code=error.status,
        media_type=MediaType.JSON,
        headers={**(headers or {}), **retry_after_headers(error)},
    )


def handle_exception(request: Request, exc: Exception) -> Response[bytes]:
    if client_left_mid_body(request.scope) and not isinstance(exc, ApiError):
        # Litestar reports the body it could not finish as a server error; nobody is there to
        # read the answer, and it is not the server's failure.
        log.info("client left before sending its whole body: %s %s", request.method, request.url.path)
        return error_response(
            request.url.path, ApiError(ErrorCode.INVALID_REQUEST_BODY, "The client left before sending the whole body.")
        )
    error = as_api_error(exc)
    if isinstance(error, ModelServedElsewhere):
        # With proxying on (server/cluster_proxy.py), this answer is replaced by the answer
        # of a replica that runs the model.
        ask_peer(request.scope, error.model)
        cluster: ClusterCatalog | None = request.app.state.get(CLUSTER_STATE)
        if cluster is not None:
            error = cluster_refusal(cluster, error.model, error.param)
    # An engine's own failures were logged where they happened.
    if error.status >= 500 and not isinstance(exc, (ApiError, EngineError)):
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    # A 405 says which methods the route takes (RFC 9110: Allow is required there).
    allow = exc.headers.get("allow") if isinstance(exc, MethodNotAllowedException) and exc.headers else None
    return error_response(request.url.path, error, {"Allow": allow} if allow else None)
