"""Real vLLM engines on the tiny demo models, started once per session.

vLLM binds an engine to the event loop it first serves on; pytest-asyncio runs every
test and fixture here on one session loop (see pyproject), so the engines are shared.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engines.admission import AdmissionPolicy
from engines.demo import demo_catalog
from engines.registry import ModelRegistry, vllm_factory
from engines.scheduler import Scheduler
from server.services import Services
from server.settings import Limits

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
async def scheduler(demo_root: Path) -> AsyncIterator[Scheduler]:
    registry = ModelRegistry(demo_catalog(demo_root), {"vllm": vllm_factory(cpu_threads=0)})
    scheduler = Scheduler(registry, AdmissionPolicy())
    await scheduler.load_all()
    assert scheduler.all_resident(), scheduler.residency()
    yield scheduler
    await scheduler.unload_all()


@pytest.fixture(scope="session")
def services(scheduler: Scheduler) -> Services:
    return Services(scheduler, Limits())
