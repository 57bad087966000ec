"""The transformers safety classifier on the tiny random demo ViT (`demo-nsfw`).

Random weights make the scores meaningless as NSFW judgements; the tests check what the engine
promises regardless: a probability per label that sums to 1, the same numbers for the same
pixels on every build and call, and a confidence that never drops as the level rises.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from PIL import Image

from engines.base import ModelSpec, SafetyEngine
from engines.image.demo import SAFETY_LABELS, SAFETY_MODEL, build_image_demo_models
from engines.image.safety import SafetyClassifierEngine, nsfw_confidence
from engines.registry import CatalogError

pytestmark = pytest.mark.integration

IMAGES = [
    Image.new("RGB", (128, 128), (0, 0, 0)),
    Image.new("RGB", (136, 96), (250, 200, 180)),
    Image.radial_gradient("L").convert("RGB"),  # 256x256, not a solid colour
]


def _spec(root: Path) -> ModelSpec:
    return next(spec for spec in build_image_demo_models(root) if spec.name == SAFETY_MODEL)


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    return _spec(tmp_path_factory.mktemp("safety-demo"))


@pytest.fixture(scope="module")
async def classifier(spec: ModelSpec) -> AsyncIterator[SafetyClassifierEngine]:
    engine = SafetyClassifierEngine(spec)
    await engine.load()
    yield engine
    await engine.unload()


async def test_probabilities_per_label_sum_to_one(classifier: SafetyClassifierEngine) -> None:
    assert isinstance(classifier, SafetyEngine)
    results = await classifier.classify(IMAGES)
    assert len(results) == len(IMAGES)
    for probabilities in results:
        assert list(probabilities) == SAFETY_LABELS
        assert all(0 <= p <= 1 for p in probabilities.values())
        assert sum(probabilities.values()) == pytest.approx(1, abs=1e-5)
    assert results[0] != results[1]  # the scores depend on the pixels
    assert await classifier.classify([]) == []


async def test_scores_are_deterministic_across_calls_batches_and_builds(
    classifier: SafetyClassifierEngine, tmp_path: Path
) -> None:
    first = await classifier.classify(IMAGES)
    assert await classifier.classify(IMAGES) == first
    alone = await classifier.classify(IMAGES[1:2])
    assert alone[0] == pytest.approx(first[1], abs=1e-6)  # batching does not change an image's score
    rebuilt = SafetyClassifierEngine(_spec(tmp_path))  # a second, independent build of the demo model
    await rebuilt.load()
    assert await rebuilt.classify(IMAGES) == first


async def test_confidence_rises_with_the_level(classifier: SafetyClassifierEngine) -> None:
    for probabilities in await classifier.classify(IMAGES):
        confidences = [nsfw_confidence(probabilities, classifier.levels[level]) for level in (0, 1, 2)]
        assert 0 <= confidences[0] <= confidences[1] <= confidences[2] <= 100
        assert confidences[0] == pytest.approx(100 * probabilities["explicit"])
    assert classifier.memory_bytes() > 0 and await classifier.health()


async def test_levels_naming_labels_the_classifier_lacks_fail_to_load(spec: ModelSpec) -> None:
    levels = {"0": ["nsfw"], "1": ["nsfw"], "2": ["nsfw"]}
    engine = SafetyClassifierEngine(msgspec.structs.replace(spec, options={"levels": levels}))
    with pytest.raises(CatalogError, match="nsfw"):
        await engine.load()
