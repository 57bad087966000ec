"""Decoding /v3 task bodies the way Novita clients send them."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from server.errors import validation_error

T = TypeVar("T")


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def decode_task_body(raw: bytes, body_type: type[T]) -> T:
    """The body as ``body_type``, reading an explicit ``null`` as "not given".

    novita-client serialises every field of its request objects, so options the caller
    left out arrive as nulls; treating them as absent lets the documented defaults apply.
    Raises ApiError(INVALID_REQUEST_BODY) naming the field on malformed or mistyped input.
    """
    try:
        return msgspec.convert(_without_nulls(msgspec.json.decode(raw)), body_type)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise validation_error(exc) from None
