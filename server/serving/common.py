"""Transitional: the names the image, audio and video services still import from here
until they move into server/capabilities/ (this module then goes)."""

from __future__ import annotations

from engines.base import ModelKind
from server.capabilities.text.sampling import new_id, unix_now
from server.errors import bad_request
from server.sse import openai_error_event as sse_error
from server.sse import sse_event

__all__ = ["bad_request", "new_id", "require_kind", "sse_error", "sse_event", "unix_now"]


def require_kind(model: str, kind: ModelKind, actual: ModelKind, what: str) -> None:
    if actual is not kind:
        raise bad_request(f"The model '{model}' is a {actual.value} model and does not serve {what}.", "model")
