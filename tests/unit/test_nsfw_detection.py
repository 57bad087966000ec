"""NSFW detection on /v3 image tasks through the real app, with fake image and safety engines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from engines.base import ModelKind, ModelSpec
from engines.image.safety import DEFAULT_LEVELS, nsfw_levels
from engines.registry import CatalogError
from server.app import create_app
from tests.fakes import FAKE_SAFETY_SPEC, FAKE_SPECS, FakeSafetyEngine
from tests.unit.conftest import make_state

# The fake image engine paints red = (seed + i) % 256: 200 and 201 here.
REQUEST = {"model_name": "fake-sd", "prompt": "a red barn", "width": 128, "height": 128, "steps": 2, "seed": 200}


@pytest.fixture
async def nsfw_client(tmp_path: Path) -> AsyncIterator[AsyncTestClient]:
    state = make_state(tmp_path, [*FAKE_SPECS, FAKE_SAFETY_SPEC], tasks={"safety_model": "fake-nsfw"})
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        yield client


async def run_task(client: AsyncTestClient, extra: dict[str, Any], **request: Any) -> dict[str, Any]:
    submitted = await client.post("/v3/async/txt2img", json={"request": {**REQUEST, **request}, "extra": extra})
    assert submitted.status_code == 200, submitted.text
    for _ in range(200):
        response = await client.get("/v3/async/task-result", params={"task_id": submitted.json()["task_id"]})
        body: dict[str, Any] = response.json()
        if body["task"]["status"] == "TASK_STATUS_SUCCEED":
            return body
        assert body["task"]["status"] != "TASK_STATUS_FAILED", body["task"]["reason"]
        await asyncio.sleep(0.01)
    raise AssertionError("task did not finish")


async def test_results_carry_a_confidence_per_image_that_rises_with_the_level(nsfw_client: AsyncTestClient) -> None:
    confidences: dict[int, list[float]] = {}
    for level in (0, 1, 2):
        extra = {"enable_nsfw_detection": True, "nsfw_detection_level": level}
        result = await run_task(nsfw_client, extra, image_num=2)
        assert result["extra"]["enable_nsfw_detection"] is True
        detections = [image["nsfw_detection_result"] for image in result["images"]]
        assert all(d["valid"] is True and 0 <= d["confidence"] <= 100 for d in detections)
        confidences[level] = [d["confidence"] for d in detections]
        # The confidence is 100 x the probability of the labels this level counts.
        for red, confidence in zip((200, 201), confidences[level], strict=True):
            probabilities = FakeSafetyEngine.probabilities(red)
            assert confidence == pytest.approx(100 * sum(probabilities[label] for label in DEFAULT_LEVELS[str(level)]))
    for index in range(2):
        assert confidences[0][index] < confidences[1][index] < confidences[2][index]
    assert confidences[0][0] < confidences[0][1]  # a redder image scores higher with the fake


async def test_disabled_detection_leaves_the_result_null(nsfw_client: AsyncTestClient) -> None:
    result = await run_task(nsfw_client, {"nsfw_detection_level": 2})
    assert result["extra"]["enable_nsfw_detection"] is False
    assert result["images"][0]["nsfw_detection_result"] is None


async def test_detection_without_a_classifier_is_refused(client: AsyncTestClient) -> None:
    body = {"request": REQUEST, "extra": {"enable_nsfw_detection": True}}
    response = await client.post("/v3/async/txt2img", json=body)
    assert response.status_code == 400
    assert response.json()["metadata"]["param"] == "extra.enable_nsfw_detection"


async def test_a_level_outside_0_to_2_is_refused(nsfw_client: AsyncTestClient) -> None:
    body = {"request": REQUEST, "extra": {"enable_nsfw_detection": True, "nsfw_detection_level": 3}}
    response = await nsfw_client.post("/v3/async/txt2img", json=body)
    assert response.status_code == 400
    assert response.json()["metadata"]["param"] == "extra.nsfw_detection_level"


def test_the_demo_classifier_is_the_default_only_when_in_the_catalog(tmp_path: Path) -> None:
    demo = msgspec.structs.replace(FAKE_SAFETY_SPEC, name="demo-nsfw")
    assert make_state(tmp_path / "a", [*FAKE_SPECS, demo]).nsfw.model == "demo-nsfw"
    assert make_state(tmp_path / "b", [*FAKE_SPECS, FAKE_SAFETY_SPEC]).nsfw.model is None
    off = make_state(tmp_path / "c", [*FAKE_SPECS, demo], tasks={"safety_model": ""})
    assert off.nsfw.model is None


def test_the_configured_classifier_must_be_a_safety_model(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="fake-sd"):
        make_state(tmp_path / "a", tasks={"safety_model": "fake-sd"})
    with pytest.raises(CatalogError, match="missing"):
        make_state(tmp_path / "b", tasks={"safety_model": "missing"})


def test_level_label_sets_from_the_catalog() -> None:
    def spec(levels: Any) -> ModelSpec:
        return ModelSpec(name="clf", kind=ModelKind.SAFETY, engine="transformers", path="-", options={"levels": levels})

    levels = nsfw_levels(spec({"0": ["nsfw"], "1": ["nsfw"], "2": ["nsfw", "sexy"]}))
    assert levels == {0: {"nsfw"}, 1: {"nsfw"}, 2: {"nsfw", "sexy"}}
    default = nsfw_levels(ModelSpec(name="d", kind=ModelKind.SAFETY, path="-"))
    assert default[2] == {"explicit", "suggestive", "swimwear"}
    with pytest.raises(CatalogError, match="below"):  # a higher level dropping a label could lower the score
        nsfw_levels(spec({"0": ["explicit"], "1": ["suggestive"], "2": ["explicit", "suggestive"]}))
    with pytest.raises(CatalogError, match="each of 0, 1, 2"):
        nsfw_levels(spec({"0": ["explicit"], "1": ["explicit"]}))
    with pytest.raises(CatalogError, match="non-empty"):
        nsfw_levels(spec({"0": [], "1": ["explicit"], "2": ["explicit"]}))
