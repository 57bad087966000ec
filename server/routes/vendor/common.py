"""What the vendor adapters share: choosing their image model."""

from __future__ import annotations

from engines.base import ModelKind
from engines.registry import CatalogError
from engines.scheduler import Scheduler

DEMO_IMAGE_MODEL = "demo-sd"


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
