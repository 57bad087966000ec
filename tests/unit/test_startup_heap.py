"""The heap built at startup is frozen once the startup models are resident, so full
garbage collections under load no longer walk it on the event loop's thread."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from server.app import create_app
from tests.unit.conftest import make_state


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()  # whatever an earlier test froze, so this one starts from nothing frozen
    yield
    gc.unfreeze()  # leave later tests' garbage collectable


@pytest.mark.usefixtures("unfrozen")
async def test_startup_heap_is_frozen_when_the_startup_models_are_loaded(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    assert gc.get_freeze_count() == 0
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        assert (await client.get("/ready")).status_code == 200
        assert gc.get_freeze_count() > 0
