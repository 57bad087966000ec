"""restore_faces and img2img's refiner on /v3 image tasks: neither is dropped unread.

restore_faces has no model behind it: true is refused naming the field, false accepted. img2img
takes the SDXL refiner as txt2img does; inpainting and ControlNet runs refuse it.
"""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from PIL import Image

from engines.base import ModelKind, ModelSpec
from server.app import create_app
from server.composition import Components
from tests.fakes import FAKE_SPECS, FakeImageEngine
from tests.unit.conftest import make_state
from tests.unit.test_image_tasks import REQUEST, poll

XL_SPEC = ModelSpec(name="fake-xl", kind=ModelKind.IMAGE, engine="fake", path="-", options={"refiner": "-"})


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[AsyncTestClient, Components]]:
    state = make_state(tmp_path, [*FAKE_SPECS, XL_SPEC])
    async with AsyncTestClient(create_app(state)) as test_client:
        await state.load_task  # type: ignore[misc]
        yield test_client, state


def png(mode: str = "RGB", size: tuple[int, int] = (128, 128)) -> str:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def bodies(**change: Any) -> dict[str, dict[str, Any]]:
    return {
        "txt2img": {"request": {**REQUEST, **change}},
        "img2img": {"request": {**REQUEST, "image_base64": png(), **change}},
        "inpainting": {"request": {**REQUEST, "image_base64": png(), "mask_image_base64": png("L"), **change}},
    }


async def test_restore_faces_true_is_refused_naming_the_field(served: tuple[AsyncTestClient, Components]) -> None:
    client, _ = served
    for route, body in bodies(restore_faces=True).items():
        response = await client.post(f"/v3/async/{route}", json=body)
        assert response.status_code == 400, route
        error = response.json()
        assert error["reason"] == "INVALID_REQUEST_BODY", route
        assert error["metadata"]["param"] == "request.restore_faces", route
        assert "restore_faces is not supported" in error["message"], route
    for route, body in bodies(restore_faces=False).items():
        submitted = await client.post(f"/v3/async/{route}", json=body)
        assert submitted.status_code == 200, (route, submitted.text)
        assert (await poll(client, submitted.json()["task_id"]))["task"]["status"] == "TASK_STATUS_SUCCEED"


async def test_img2img_passes_the_refiner_switch_to_the_engine(served: tuple[AsyncTestClient, Components]) -> None:
    client, state = served
    body = bodies(model_name="fake-xl", refiner={"switch_at": 0.3})["img2img"]
    submitted = await client.post("/v3/async/img2img", json=body)
    assert submitted.status_code == 200, submitted.text
    assert (await poll(client, submitted.json()["task_id"]))["task"]["status"] == "TASK_STATUS_SUCCEED"
    engine = state.scheduler.registry.get("fake-xl")
    assert isinstance(engine, FakeImageEngine) and engine.last_job is not None
    assert engine.last_job.init_image is not None and engine.last_job.refiner_switch_at == 0.3


async def test_the_refiner_is_refused_where_it_cannot_run(served: tuple[AsyncTestClient, Components]) -> None:
    client, _ = served
    # A model without a refiner, on img2img as on txt2img.
    response = await client.post("/v3/async/img2img", json=bodies(refiner={"switch_at": 0.5})["img2img"])
    assert response.status_code == 400 and response.json()["metadata"]["param"] == "request.refiner"
    # ControlNet img2img: the refiner has no ControlNet pipeline.
    unit = {"model_name": "any", "image_base64": png(), "preprocessor": "none"}
    with_control = bodies(model_name="fake-xl", refiner={"switch_at": 0.5}, controlnet={"units": [unit]})["img2img"]
    response = await client.post("/v3/async/img2img", json=with_control)
    assert response.status_code == 400 and response.json()["metadata"]["param"] == "request.refiner"
    assert "without ControlNet" in response.json()["message"]
