"""What the vendor adapters share: choosing their image model, decoding loose JSON bodies."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from engines.base import ModelKind
from engines.registry import CatalogError
from engines.scheduler import Scheduler
from schemas.errors import ApiError, ErrorCode
from server.errors import validation_error

DEMO_IMAGE_MODEL = "demo-sd"
T = TypeVar("T")


def vendor_model(scheduler: Scheduler, configured: str | None, setting: str) -> str | None:
    """The image model a vendor family runs: the setting, else the demo model, else the
    catalog's first image model; None when the family is off ("" or no image model)."""
    if configured == "":
        return None
    if configured is not None:
        engine = scheduler.registry.get(configured)
        if engine is None or engine.spec.kind is not ModelKind.IMAGE:
            raise CatalogError(f"vendor.{setting} {configured!r} is not an image model in the catalog")
        return engine.spec.name
    if scheduler.registry.get(DEMO_IMAGE_MODEL) is not None:
        return DEMO_IMAGE_MODEL
    return next((engine.spec.name for engine in scheduler.registry if engine.spec.kind is ModelKind.IMAGE), None)


def decode_loose(raw: bytes, body_type: type[T]) -> T:
    """A JSON object as ``body_type``, converting the strings these clients send for
    numbers ("512", "7.5"); an empty string reads as "not given"."""
    try:
        data = msgspec.json.decode(raw) if raw.strip() else {}
    except msgspec.DecodeError as exc:
        raise validation_error(exc) from None
    if not isinstance(data, dict):
        raise ApiError(ErrorCode.INVALID_REQUEST_BODY, "The request body must be a JSON object.")
    cleaned = {name: value for name, value in data.items() if value is not None and value != ""}
    try:
        return msgspec.convert(cleaned, body_type, strict=False)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
