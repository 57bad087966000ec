"""SafetyClassifierEngine: a transformers image classifier that scores generated images for NSFW content.

Any single-label image-classification folder that transformers' Auto classes load works (ViT, CLIP-
style and other backbones with a classification head): its `config.json` `id2label` names the
classes, and the engine returns, per image, the softmax probability of each class.

A /v3 task's `extra.nsfw_detection_level` picks which classes count as NSFW (the seed's levels):

- 0: explicit nudity and sexual activity only;
- 1: also non-explicit nudity, obstructed intimate parts, kissing ("suggestive");
- 2: also swimwear and underwear.

The reported confidence is 100 times the summed probability of the classes the level counts. A
catalog entry maps levels to its own labels with `options = { levels = { "0" = [...], "1" = [...],
"2" = [...] } }`; each level lists every label it counts, so each level must include the labels of
the level below (the confidence never drops as the level rises), and every label must be one of the
classifier's. Without `levels`, `DEFAULT_LEVELS` applies: labels "explicit", "suggestive" and
"swimwear" (plus any others, such as "normal", that no level counts), as the demo classifier has.

Classification runs on a worker thread in the scheduler's device turns, like the diffusers pipelines
(the engine is a DeviceSerialEngine): two models computing on one device at once only slow each
other down.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Collection, Mapping
from typing import Any, Literal

from engines.base import ModelSpec
from engines.image.devices import parameter_bytes, release_memory
from engines.registry import CatalogError
from engines.threads import run_cancellable
from engines.workpools import WorkPool, run_in

log = logging.getLogger("omniserve.engines.safety")

NSFW_LEVELS = (0, 1, 2)
DEFAULT_LEVELS: dict[str, list[str]] = {
    "0": ["explicit"],
    "1": ["explicit", "suggestive"],
    "2": ["explicit", "suggestive", "swimwear"],
}


def nsfw_levels(spec: ModelSpec) -> dict[int, frozenset[str]]:
    """The labels each NSFW detection level counts, from `options.levels` or `DEFAULT_LEVELS`."""
    raw = spec.options.get("levels", DEFAULT_LEVELS)
    if not isinstance(raw, Mapping) or sorted(str(key) for key in raw) != [str(level) for level in NSFW_LEVELS]:
        raise CatalogError(f"model {spec.name}: options.levels must map each of 0, 1, 2 to a list of labels")
    levels: dict[int, frozenset[str]] = {}
    for key, labels in raw.items():
        if not isinstance(labels, list) or not labels or not all(isinstance(label, str) for label in labels):
            raise CatalogError(f"model {spec.name}: options.levels.{key} must be a non-empty list of labels")
        levels[int(key)] = frozenset(labels)
    if not levels[0] <= levels[1] <= levels[2]:
        raise CatalogError(f"model {spec.name}: each level in options.levels must count the labels of the one below")
    return levels


def nsfw_confidence(probabilities: Mapping[str, float], labels: Collection[str]) -> float:
    """0..100: how likely the image is NSFW, counting the classes in `labels` as NSFW."""
    return min(100.0, max(0.0, 100.0 * sum(probabilities.get(label, 0.0) for label in labels)))


class SafetyClassifierEngine:
    """One image-classification model behind the SafetyEngine protocol."""

    device_serial: Literal[True] = True  # one job at a time on the device (DeviceSerialEngine)

    def __init__(self, spec: ModelSpec, *, device: str = "cpu") -> None:
        self.spec = spec
        self.device = device
        self.levels = nsfw_levels(spec)  # a catalog mistake fails at startup, not in the first task
        self._model: Any = None
        self._processor: Any = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    async def load(self) -> None:
        if self._model is None:
            self._model, self._processor = await run_in(WorkPool.ENGINE, self._load)

    def _load(self) -> tuple[Any, Any]:
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        log.info("loading safety classifier %s with transformers", self.spec.name)
        # float32 on every device: the classifier is small next to a pipeline, and the scores
        # near a threshold should not depend on where it runs.
        model = AutoModelForImageClassification.from_pretrained(self.spec.path, dtype=torch.float32)
        if model.config.problem_type == "multi_label_classification":
            raise CatalogError(f"model {self.spec.name}: a safety classifier must be single-label (softmax)")
        labels = set(model.config.id2label.values())
        unknown = set().union(*self.levels.values()) - labels
        if unknown:
            raise CatalogError(
                f"model {self.spec.name}: options.levels names {sorted(unknown)}, "
                f"but the classifier's labels are {sorted(labels)}"
            )
        processor = AutoImageProcessor.from_pretrained(self.spec.path)
        return model.eval().to(self.device), processor

    async def unload(self) -> None:
        self._model, self._processor = None, None
        release_memory(self.device)

    def memory_bytes(self) -> int:
        if self._model is None:
            return self.spec.memory_bytes
        return parameter_bytes([self._model])

    async def health(self) -> bool:
        return self._model is not None

    async def classify(self, images: list[Any]) -> list[dict[str, float]]:
        """Per image, the probability of each label (`id2label`'s names); each dict sums to 1."""
        if self._model is None:
            raise RuntimeError(f"model {self.spec.name} is not loaded")
        if not images:
            return []
        return await run_cancellable(functools.partial(self._run, images))

    def _run(self, images: list[Any], cancelled: threading.Event) -> list[dict[str, float]]:
        import torch

        # Resizing and normalising run on the host, whatever the model's device.
        inputs = self._processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
        if cancelled.is_set():
            return []
        with torch.inference_mode():
            logits = self._model(pixel_values=inputs["pixel_values"].to(self.device)).logits
        rows = logits.float().softmax(dim=-1).cpu().tolist()
        names = self._model.config.id2label
        return [{names[index]: probability for index, probability in enumerate(row)} for row in rows]
