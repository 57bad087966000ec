from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from engines.base import ModelSpec
from server.app import build_components, create_app
from server.composition import Components
from server.settings import Settings
from tests.fakes import FAKE_SPECS, fake_factory

ClientFactory = Callable[..., AsyncTestClient]


def make_state(tmp_path: Path, specs: list[ModelSpec] | None = None, **settings: object) -> Components:
    config = msgspec.convert({"data_dir": str(tmp_path), **settings}, Settings)
    return build_components(config, specs if specs is not None else FAKE_SPECS, {"fake": fake_factory})


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[AsyncTestClient]:
    state = make_state(tmp_path)
    async with AsyncTestClient(create_app(state)) as test_client:
        await state.load_task  # type: ignore[misc]
        test_client.app_state = state  # type: ignore[attr-defined]
        yield test_client
