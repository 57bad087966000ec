from __future__ import annotations

import asyncio

import pytest

from engines.registry import ModelRegistry
from engines.scheduler import AdmissionPolicy, Residency, Scheduler
from schemas.errors import ApiError, ErrorCode
from tests.fakes import FAKE_SPECS, fake_factory


def make_scheduler(**policy: float) -> Scheduler:
    return Scheduler(ModelRegistry(FAKE_SPECS, {"fake": fake_factory}), AdmissionPolicy(**policy))  # type: ignore[arg-type]


async def test_lease_loads_on_demand_and_resolves_aliases() -> None:
    scheduler = make_scheduler()
    assert scheduler.residency()["fake-chat"] is Residency.UNLOADED
    async with scheduler.lease("fake-chat-alias") as engine:
        assert engine.spec.name == "fake-chat"
    assert scheduler.residency()["fake-chat"] is Residency.RESIDENT


async def test_unknown_model() -> None:
    with pytest.raises(ApiError) as caught:
        async with make_scheduler().lease("nope"):
            pass
    assert caught.value.code is ErrorCode.MODEL_NOT_FOUND


async def test_full_queue_is_429_and_slow_queue_is_503() -> None:
    scheduler = make_scheduler(max_concurrency=1, max_queue_depth=1, queue_timeout_s=0.2)
    holder_entered = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with scheduler.lease("fake-chat"):
            holder_entered.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await holder_entered.wait()

    async def wait_in_queue() -> None:
        async with scheduler.lease("fake-chat"):
            pass

    waiter = asyncio.create_task(wait_in_queue())
    await asyncio.sleep(0.01)
    with pytest.raises(ApiError) as full:
        async with scheduler.lease("fake-chat"):
            pass
    assert full.value.code is ErrorCode.QUEUE_FULL and full.value.status == 429
    assert full.value.retry_after is not None
    with pytest.raises(ApiError) as timed_out:
        await waiter
    assert timed_out.value.code is ErrorCode.SERVICE_NOT_AVAILABLE and timed_out.value.status == 503
    release.set()
    await holder
    # The slot is free again.
    async with scheduler.lease("fake-chat"):
        pass
