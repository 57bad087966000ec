"""NSFW detection of generated or upscaled images (``extra.enable_nsfw_detection``)."""

from __future__ import annotations

from typing import Any

from engines.admission import Priority
from engines.base import ModelKind, SafetyEngine
from engines.image.demo import SAFETY_MODEL as DEMO_SAFETY_MODEL
from engines.image.safety import nsfw_confidence, nsfw_levels
from engines.registry import CatalogError
from engines.scheduler import Scheduler
from schemas.errors import ApiError, ErrorCode
from server.capabilities.calls import engine_call

NsfwResult = dict[str, object]


class NsfwDetector:
    def __init__(self, scheduler: Scheduler, safety_model: str | None) -> None:
        self.scheduler = scheduler
        # The classifier (settings tasks.safety_model); unset means the demo one when the
        # catalog has it, "" means none.
        if safety_model is None:
            safety_model = DEMO_SAFETY_MODEL if scheduler.registry.get(DEMO_SAFETY_MODEL) is not None else ""
        self.model = safety_model or None
        self.levels: dict[int, frozenset[str]] = {}
        if self.model is not None:
            classifier = scheduler.registry.get(self.model)
            if classifier is None or classifier.spec.kind is not ModelKind.SAFETY:
                raise CatalogError(f"tasks.safety_model {self.model!r} is not a safety model in the catalog")
            self.levels = nsfw_levels(classifier.spec)

    @property
    def configured(self) -> bool:
        return self.model is not None

    def require(self) -> str:
        """The classifier's name, or a 400 when none is configured."""
        if self.model is None:
            raise ApiError(
                ErrorCode.INVALID_REQUEST_BODY,
                "NSFW detection is not configured on this server.",
                param="extra.enable_nsfw_detection",
            )
        return self.model

    async def results(self, images: list[Any], enabled: bool, level: int) -> list[NsfwResult | None]:
        """Per image, the task result's ``nsfw_detection_result``; None each unless ``enabled``."""
        if not enabled:
            return [None] * len(images)
        model = self.require()
        # Only task work reaches here: it queues behind interactive requests, like the generation.
        call = engine_call(self.scheduler, model, SafetyEngine, "image_safety", priority=Priority.BACKGROUND)
        async with call as (classifier, _):
            scores = await classifier.classify(images)
        counted = self.levels[level]
        return [{"valid": True, "confidence": nsfw_confidence(probabilities, counted)} for probabilities in scores]
