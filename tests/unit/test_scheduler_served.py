"""A scheduler that runs part of the catalog (cluster.serve): the rest stays known for
validation, but is never planned, loaded or leased here."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.admission import AdmissionPolicy
from engines.base import ModelKind, ModelSpec, TextGenerationEngine
from engines.devices import DeviceMemory
from engines.errors import ModelNotServedHere
from engines.registry import ModelRegistry
from engines.residency import Residency
from engines.scheduler import Scheduler
from engines.sizing import FootprintTooLarge
from tests.fakes import FAKE_SPECS, fake_factory
from tests.model_files import safetensors

MB = 1024 * 1024


def scheduler_serving(*served: str, specs: list[ModelSpec] = FAKE_SPECS, **options: object) -> Scheduler:
    registry = ModelRegistry(specs, {"fake": fake_factory})
    return Scheduler(registry, AdmissionPolicy(), served=set(served).__contains__, **options)  # type: ignore[arg-type]


async def test_a_model_run_elsewhere_is_known_but_never_loaded_here() -> None:
    scheduler = scheduler_serving("fake-embed")
    assert scheduler.served_models() == ["fake-embed"]
    # Validation still reads it (by alias too).
    assert scheduler.spec("fake-chat-alias").name == "fake-chat"
    assert scheduler.engine("fake-chat", TextGenerationEngine).spec.kind is ModelKind.CHAT
    with pytest.raises(ModelNotServedHere) as refused:
        async with scheduler.lease("fake-chat-alias", TextGenerationEngine):
            pass
    assert refused.value.model == "fake-chat" and refused.value.field == "model"
    with pytest.raises(ModelNotServedHere):
        await scheduler.resident_engine("fake-chat")
    with pytest.raises(ModelNotServedHere):
        await scheduler.load_model("fake-chat")
    with pytest.raises(ModelNotServedHere):
        scheduler.check_admission("fake-chat")
    async with scheduler.lease("fake-embed"):
        pass
    assert scheduler.residency()["fake-chat"] is Residency.UNLOADED


async def test_startup_loads_and_readiness_count_only_the_models_run_here() -> None:
    specs = [ModelSpec(name="pinned-elsewhere", kind=ModelKind.CHAT, engine="fake", path="-", pinned=True)]
    scheduler = scheduler_serving("fake-embed", specs=[*FAKE_SPECS, *specs])
    await scheduler.load_all()
    residency = scheduler.residency()
    assert residency["fake-embed"] is Residency.RESIDENT
    assert {residency[name] for name in ("fake-chat", "fake-sd", "pinned-elsewhere")} == {Residency.UNLOADED}
    assert scheduler.ready()  # a pinned model that runs elsewhere is not waited for


def test_a_model_run_elsewhere_need_not_fit_this_servers_devices(tmp_path: Path) -> None:
    # Undeclared: planned from its weights (40 MiB), against a 16 MiB budget.
    safetensors(tmp_path / "huge" / "model.safetensors", {"w": ("F32", [40 * MB // 4])})
    huge = ModelSpec(name="huge", kind=ModelKind.CHAT, engine="fake", path=str(tmp_path / "huge"))
    device = DeviceMemory(name="cpu", total_bytes=16 * MB, budget_bytes=16 * MB)
    with pytest.raises(FootprintTooLarge):
        scheduler_serving("huge", specs=[huge], devices=[device])
    elsewhere = scheduler_serving("fake-embed", specs=[huge, *FAKE_SPECS], devices=[device])
    assert elsewhere.report().models["huge"].footprint_source == "unknown"  # not planned here
