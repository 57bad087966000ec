"""The scheduler with undeclared models: placed by their planned footprints before the first
load, refused at start when one could never fit (fake engines; the rule: test_sizing.py)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from engines.admission import AdmissionPolicy
from engines.base import Engine, ModelKind, ModelSpec
from engines.devices import DeviceMemory
from engines.registry import ModelRegistry
from engines.residency import Residency
from engines.scheduler import Scheduler
from engines.sizing import Footprint, FootprintTooLarge
from server.cli import main
from tests.fakes import FakeTextEngine
from tests.model_files import TINY_LLAMA, TINY_PER_TOKEN, llm_folder, safetensors

MB = 1 << 20
GB = 1 << 30
MEASURED = 80 * MB


class MeasuredEngine(FakeTextEngine):
    """Reports its own footprint once loaded, as the real engines do."""

    def memory_bytes(self) -> int:
        return MEASURED if self.loaded else 0


class PlannedFakeEngine(MeasuredEngine):
    """Takes the scheduler's plan, as the vLLM engines do."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.plan: Footprint | None = None

    def use_footprint(self, plan: Footprint) -> None:
        self.plan = plan


def undeclared(root: Path, name: str, weights_mb: int) -> ModelSpec:
    safetensors(root / name / "model.safetensors", {"w": ("F32", [weights_mb * MB // 4])})
    return ModelSpec(name=name, kind=ModelKind.CHAT, engine="measured", path=str(root / name))


def scheduler(specs: list[ModelSpec], budget_mb: int) -> Scheduler:
    host = DeviceMemory(name="cpu", total_bytes=GB, budget_bytes=budget_mb * MB)
    factories = {"measured": MeasuredEngine, "vllm": PlannedFakeEngine}
    return Scheduler(ModelRegistry(specs, factories), AdmissionPolicy(), [host])  # type: ignore[arg-type]


async def test_undeclared_models_are_placed_by_their_plan_before_loading(tmp_path: Path) -> None:
    # 60 MiB of weights x 1.5: 90 MiB planned each; the budget holds one.
    sched = scheduler([undeclared(tmp_path, "a", 60), undeclared(tmp_path, "b", 60)], budget_mb=150)
    report = sched.report().models
    assert report["a"].footprint_source == report["b"].footprint_source == "estimated"
    assert report["a"].footprint_bytes == 90 * MB
    await sched.load_all()
    # Without the plan both would have counted as nothing and loaded side by side.
    assert sched.residency() == {"a": Residency.RESIDENT, "b": Residency.UNLOADED}
    a = sched.report().models["a"]
    assert a.footprint_source == "measured" and a.footprint_bytes == MEASURED
    async with sched.lease("b"):
        pass
    # b's plan (90 MiB) and a's measure (80 MiB) do not fit together: a made room.
    assert sched.residency() == {"a": Residency.UNLOADED, "b": Residency.RESIDENT}
    assert sched.report().models["a"].evictions == {"lru": 1}


async def test_a_vllm_engine_gets_its_plan(tmp_path: Path) -> None:
    folder = llm_folder(tmp_path / "chat", TINY_LLAMA)
    spec = ModelSpec(name="chat", kind=ModelKind.CHAT, path=str(folder))
    sched = scheduler([spec], budget_mb=19 * 1024)
    engine = sched.engine("chat")
    assert isinstance(engine, PlannedFakeEngine) and engine.plan is not None
    assert engine.plan.kv_cache_bytes == 4 * 1024 * TINY_PER_TOKEN and engine.plan.max_model_len == 1024
    assert sched.report().models["chat"].footprint_bytes == engine.plan.total_bytes


def test_a_model_that_can_never_fit_is_refused_at_start(tmp_path: Path) -> None:
    fits = undeclared(tmp_path, "fits", 10)
    with pytest.raises(FootprintTooLarge) as refused:
        scheduler([fits, undeclared(tmp_path, "huge", 200)], budget_mb=150)
    assert set(refused.value.plans) == {"huge"}
    assert "model huge: planned 0.29 GiB" in str(refused.value) and "declare memory_bytes" in str(refused.value)
    # Declared footprints are the catalog's word: such a model loads alone, as before.
    declared = msgspec.structs.replace(undeclared(tmp_path, "big", 1), memory_bytes=200 * MB)
    assert isinstance(scheduler([declared], budget_mb=150).engine("big"), Engine)


def test_serve_exits_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Serving would send the root logger's records to this test's stderr from then on.
    monkeypatch.setattr("server.telemetry.logs.configure_logging", lambda *_: None)
    # An undeclared vLLM model whose one full-length sequence alone outgrows a 64 MiB budget.
    folder = llm_folder(tmp_path / "long", {**TINY_LLAMA, "max_position_embeddings": 131072})
    model = {"name": "long", "kind": "chat", "path": str(folder), "options": {"max_model_len": 131072}}
    config = {"data_dir": str(tmp_path / "data"), "scheduler": {"host_budget": "64MiB"}, "models": [model]}
    (tmp_path / "omniserve.toml").write_bytes(msgspec.toml.encode(config))
    assert main(["serve", "--config", str(tmp_path / "omniserve.toml")]) == 2
    error = capsys.readouterr().err
    assert "model long: planned" in error and "KV cache 0.12 GiB" in error
    assert not (tmp_path / "data" / "keys.sqlite3").exists()  # nothing was opened


def test_plans_read_config_only_from_the_model_folder(tmp_path: Path) -> None:
    # A folder without config.json: the cache falls back to the budget's share, never vLLM's default.
    folder = tmp_path / "bare"
    safetensors(folder / "model.safetensors", {"w": ("F32", [MB // 4])})
    spec = ModelSpec(name="bare", kind=ModelKind.CHAT, path=str(folder))
    engine = scheduler([spec], budget_mb=8 * 1024).engine("bare")
    assert isinstance(engine, PlannedFakeEngine) and engine.plan is not None
    assert engine.plan.kv_cache_bytes == 2 * GB and engine.plan.max_model_len is None
