"""Real engines on the demo models, started once per session: vLLM's and Whisper's.

vLLM binds an engine to the event loop it first serves on; pytest-asyncio runs every
test and fixture here on one session loop (see pyproject), so the engines are shared.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engines.admission import AdmissionPolicy
from engines.audio.stt_demo import BASE_MODEL, TINY_MODEL, build_stt_demo_models
from engines.audio.whisper import WhisperEngine
from engines.demo import CHAT_MODEL, demo_catalog
from engines.registry import ModelRegistry, vllm_factory
from engines.scheduler import Scheduler
from server.capabilities.text import TextCapability
from server.settings import Limits

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
async def scheduler(demo_root: Path) -> AsyncIterator[Scheduler]:
    # The real chat model is the e2e tests' (a minute's load); these run on the tiny ones.
    specs = [spec for spec in demo_catalog(demo_root) if spec.name != CHAT_MODEL]
    registry = ModelRegistry(specs, {"vllm": vllm_factory(cpu_threads=0)})
    scheduler = Scheduler(registry, AdmissionPolicy())
    await scheduler.load_all()
    assert scheduler.all_resident(), scheduler.residency()
    yield scheduler
    await scheduler.unload_all()


@pytest.fixture(scope="session")
def services(scheduler: Scheduler) -> TextCapability:
    return TextCapability(scheduler, Limits())


@pytest.fixture(scope="session")
def stt_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stt-demo")
    build_stt_demo_models(root)
    return root


async def _whisper(root: Path, name: str) -> WhisperEngine:
    spec = next(spec for spec in build_stt_demo_models(root) if spec.name == name)
    engine = WhisperEngine(spec)
    await engine.load()
    return engine


@pytest.fixture(scope="session")
async def tiny(stt_root: Path) -> AsyncIterator[WhisperEngine]:
    """Whisper with random weights: fast, for everything around the words."""
    engine = await _whisper(stt_root, TINY_MODEL)
    yield engine
    await engine.unload()


@pytest.fixture(scope="session")
async def base(stt_root: Path) -> AsyncIterator[WhisperEngine]:
    """The real Whisper base, shared by the speech-to-text modules."""
    engine = await _whisper(stt_root, BASE_MODEL)
    yield engine
    await engine.unload()
