"""hires_fix.upscaler names: Novita's three everywhere, plus those a checkpoint's options.upscalers maps."""

from __future__ import annotations

from pathlib import Path

from litestar.testing import AsyncTestClient

from engines.base import ModelKind, ModelSpec
from engines.image.hires import hires_upscalers
from server.app import create_app
from tests.fakes import FAKE_SPECS, FakeImageEngine
from tests.unit.conftest import make_state
from tests.unit.test_image_tasks import REQUEST, poll

MAPPED = ModelSpec(
    name="fake-mapped",
    kind=ModelKind.IMAGE,
    engine="fake",
    path="-",
    options={"upscalers": {"4x-UltraSharp": "-", "RealESRNet_x4plus": "-"}},
)


def test_the_names_a_checkpoint_takes() -> None:
    novita = ("Latent", "RealESRGAN_x4plus_anime_6B", "RealESRNet_x4plus")
    assert hires_upscalers({}) == novita
    assert hires_upscalers(MAPPED.options) == (*novita, "4x-UltraSharp")


async def test_a_mapped_name_is_taken_and_an_unknown_one_refused(tmp_path: Path) -> None:
    state = make_state(tmp_path, [*FAKE_SPECS, MAPPED])
    hires = {"target_width": 256, "target_height": 256, "upscaler": "4x-UltraSharp"}
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        body = {"request": {**REQUEST, "model_name": "fake-mapped", "hires_fix": hires}}
        submitted = await client.post("/v3/async/txt2img", json=body)
        assert submitted.status_code == 200, submitted.text
        assert (await poll(client, submitted.json()["task_id"]))["task"]["status"] == "TASK_STATUS_SUCCEED"
        engine = state.scheduler.registry.get("fake-mapped")
        assert isinstance(engine, FakeImageEngine) and engine.last_job is not None
        assert engine.last_job.hires_fix is not None and engine.last_job.hires_fix.upscaler == "4x-UltraSharp"
        # Another checkpoint does not map it.
        refused = await client.post("/v3/async/txt2img", json={"request": {**REQUEST, "hires_fix": hires}})
        assert refused.status_code == 400
        assert refused.json()["metadata"]["param"] == "request.hires_fix.upscaler"
        assert "4x-UltraSharp" in refused.json()["message"]
