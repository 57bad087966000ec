"""Engine-side failures, expressed in the shared vocabulary so the server renders them as is."""

from __future__ import annotations

from schemas.errors import ApiError, ErrorCode


def invalid_input(message: str, param: str | None = None) -> ApiError:
    return ApiError(ErrorCode.INVALID_REQUEST_BODY, message, param=param)


def engine_failed(model: str) -> ApiError:
    # The cause is logged where it happened; the client learns only which model failed.
    return ApiError(ErrorCode.ENGINE_ERROR, f"The engine for model '{model}' failed to serve the request.")
