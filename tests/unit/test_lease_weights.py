"""Leases that take several of a model's slots: a request's sequences count against its concurrency."""

from __future__ import annotations

import asyncio

import pytest

from engines.admission import AdmissionPolicy, FairGate, Priority
from engines.errors import Overloaded
from engines.registry import ModelRegistry
from engines.scheduler import Scheduler
from tests.fakes import FAKE_SPECS, fake_factory


async def _waiting(gate: FairGate, count: int) -> None:
    async with asyncio.timeout(5):
        while gate.waiting < count:
            await asyncio.sleep(0)


async def test_a_heavy_waiter_waits_until_its_weight_fits_and_keeps_its_turn() -> None:
    gate = FairGate(4)
    await gate.acquire(Priority.INTERACTIVE, "a", 0.0, weight=3)
    assert gate.held == 3
    heavy = asyncio.create_task(gate.acquire(Priority.INTERACTIVE, "b", 5.0, weight=2))
    await _waiting(gate, 1)
    # One unit is free, but the heavy waiter came first: a light one queues behind it.
    assert gate.locked(1)
    light = asyncio.create_task(gate.acquire(Priority.INTERACTIVE, "c", 5.0, weight=1))
    await _waiting(gate, 2)
    gate.release(3)
    await asyncio.wait_for(asyncio.gather(heavy, light), 5)
    assert gate.held == 3 and gate.waiting == 0
    gate.release(2)
    gate.release(1)
    assert gate.held == 0


async def test_a_weight_above_the_limit_takes_the_whole_gate() -> None:
    gate = FairGate(2)
    await gate.acquire(Priority.INTERACTIVE, None, 0.0, weight=50)
    assert gate.held == 2 and gate.locked(1)
    gate.release(50)
    assert gate.held == 0 and not gate.locked(2)


async def test_a_heavy_waiter_that_gives_up_lets_lighter_ones_in() -> None:
    gate = FairGate(4)
    await gate.acquire(Priority.INTERACTIVE, "a", 0.0, weight=3)
    heavy = asyncio.create_task(gate.acquire(Priority.INTERACTIVE, "b", 0.1, weight=4))
    await _waiting(gate, 1)
    light = asyncio.create_task(gate.acquire(Priority.INTERACTIVE, "c", 5.0, weight=1))
    await _waiting(gate, 2)
    with pytest.raises(TimeoutError):
        await heavy
    await asyncio.wait_for(light, 1)  # 3 + 1 fit once the heavy one left the line
    assert gate.held == 4 and gate.waiting == 0


async def test_leases_count_their_weight_against_the_models_concurrency() -> None:
    policy = AdmissionPolicy(max_concurrency=4, queue_timeout_s=0.2)
    scheduler = Scheduler(ModelRegistry(FAKE_SPECS, {"fake": fake_factory}), policy)
    async with scheduler.lease("fake-chat", weight=3):
        async with scheduler.lease("fake-chat", weight=1):  # 3 + 1: fits at once
            with pytest.raises(Overloaded) as busy:
                async with scheduler.lease("fake-chat", weight=1):
                    pass
            assert not busy.value.queue_full
        with pytest.raises(Overloaded):
            async with scheduler.lease("fake-chat", weight=2):
                pass
        async with scheduler.lease("fake-chat", weight=1):
            pass
    async with asyncio.timeout(1), scheduler.lease("fake-chat", weight=4):
        pass
    assert scheduler.queue_state()["fake-chat"] == (0, 0)
