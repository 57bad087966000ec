"""What the synchronous image tools (img2prompt, reimagine) share: the catalog model a setting
names, and the input image checked against the tool's side limit."""

from __future__ import annotations

from typing import Any

from engines.base import ModelKind
from engines.registry import CatalogError
from engines.scheduler import Scheduler
from schemas.errors import ApiError, ErrorCode
from server.capabilities.images.inputs import base64_image_bytes, open_input_image


def tool_model(scheduler: Scheduler, configured: str | None, kind: ModelKind, demo: str, setting: str) -> str | None:
    """The catalog model a tool runs: the setting's, else the demo model when the catalog has
    it, else the catalog's first model of ``kind``; None when the tool is off ("" or no such
    model). A setting that names no model of ``kind`` stops the start, naming the setting."""
    if configured == "":
        return None
    if configured is not None:
        engine = scheduler.registry.get(configured)
        if engine is None or engine.spec.kind is not kind:
            raise CatalogError(f"{setting} {configured!r} is not a {kind.value} model in the catalog")
        return engine.spec.name
    if scheduler.registry.get(demo) is not None:
        return demo
    return next((engine.spec.name for engine in scheduler.registry if engine.spec.kind is kind), None)


def require_model(model: str | None, what: str) -> str:
    if model is None:
        raise ApiError(ErrorCode.MODEL_NOT_FOUND, f"No {what} model is configured on this server.")
    return model


def tool_image(value: str, param: str, max_side: int) -> tuple[bytes, Any]:
    """The bytes and decoded image (PIL) of a base64 image field, within the server's input
    limits (format, bytes, pixels) and at most ``max_side`` a side. Blocking: run it on the media pool."""
    data = base64_image_bytes(value, param)
    image = open_input_image(data, param)
    width, height = image.size
    if width > max_side or height > max_side:
        raise ApiError(
            ErrorCode.IMAGE_EXCEEDS_MAX_RESOLUTION,
            f"{param} is {width}x{height}; at most {max_side}x{max_side} is accepted.",
            param=param,
        )
    return data, image
