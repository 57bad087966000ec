"""Turns beyond one model's queue: device turns for serial engines, aging and the background deadline."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Literal

import msgspec
import pytest

from engines.admission import AdmissionPolicy, FairGate, Priority, lease_priority_floor
from engines.base import BatchImageEngine, DeviceSerialEngine, ImageGeneration, ImageResult, ModelKind, ModelSpec
from engines.devices import DeviceMemory
from engines.errors import Overloaded
from engines.registry import ModelRegistry
from engines.scheduler import Scheduler
from engines.threads import run_cancellable
from tests.fakes import FakeImageEngine, FakeTextEngine


class SerialImageEngine(FakeImageEngine):
    """A fake diffusers engine: one job at a time on its device."""

    device_serial: Literal[True] = True

    def __init__(self, spec: ModelSpec, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self.device = "cpu"


def serial_factory(spec: ModelSpec) -> Any:
    return SerialImageEngine(spec) if spec.kind is ModelKind.IMAGE else FakeTextEngine(spec)


SPECS = [
    ModelSpec(name="sd-a", kind=ModelKind.IMAGE, engine="fake", path="-"),
    ModelSpec(name="sd-b", kind=ModelKind.IMAGE, engine="fake", path="-"),
    ModelSpec(name="chat", kind=ModelKind.CHAT, engine="fake", path="-"),
]


def make_scheduler(**policy: float) -> Scheduler:
    host = DeviceMemory(name="cpu", total_bytes=1 << 30, budget_bytes=1 << 30)
    registry = ModelRegistry(SPECS, {"fake": serial_factory})
    return Scheduler(registry, AdmissionPolicy(**policy), [host])  # type: ignore[arg-type]


class Holder:
    """Holds a lease on `model` until released."""

    def __init__(self, scheduler: Scheduler, model: str) -> None:
        self.entered = asyncio.Event()
        self._release = asyncio.Event()
        self.task = asyncio.create_task(self._hold(scheduler, model))

    async def _hold(self, scheduler: Scheduler, model: str) -> None:
        async with scheduler.lease(model):
            self.entered.set()
            await self._release.wait()

    async def release(self) -> None:
        self._release.set()
        await self.task


def test_diffusers_engines_are_device_serial() -> None:
    from engines.image.pipelines import DiffusersImageEngine
    from engines.image.safety import SafetyClassifierEngine
    from engines.image.upscale import UpscalerEngine
    from engines.video.pipelines import DiffusersVideoEngine

    for engine_cls in (DiffusersImageEngine, UpscalerEngine, SafetyClassifierEngine, DiffusersVideoEngine):
        spec = ModelSpec(name="m", kind=ModelKind.IMAGE, engine="diffusers", path="-", options={"nsfw_labels": []})
        assert isinstance(engine_cls(spec), DeviceSerialEngine), engine_cls
    assert not isinstance(FakeTextEngine(SPECS[2]), DeviceSerialEngine)
    # Batching is an optional capability, found on an engine leased as an ImageEngine.
    assert isinstance(DiffusersImageEngine(SPECS[0]), BatchImageEngine)
    assert not isinstance(SerialImageEngine(SPECS[0]), BatchImageEngine)


async def test_serial_engines_take_turns_on_their_device_by_priority() -> None:
    """A running job on sd-a holds the device: an interactive request for sd-b goes before
    background work queued earlier for either model, though each model's own slot is free."""
    scheduler = make_scheduler()
    holder = Holder(scheduler, "sd-a")
    await holder.entered.wait()
    order: list[str] = []

    async def use(label: str, model: str, priority: Priority) -> None:
        async with scheduler.lease(model, priority=priority, owner="k"):
            order.append(label)
            await asyncio.sleep(0)

    arrivals = [("task-a", "sd-a", Priority.BACKGROUND), ("task-b", "sd-b", Priority.BACKGROUND)]
    arrivals += [("openai-b", "sd-b", Priority.INTERACTIVE)]
    waiters = []
    for label, model, priority in arrivals:
        waiters.append(asyncio.create_task(use(label, model, priority)))
        await asyncio.sleep(0.01)  # loaded and queued in this order
    [host] = scheduler.report().devices
    assert (host.serial_running, host.serial_waiting) == (1, 3)
    assert scheduler.queue_state()["sd-b"] == (2, 0)
    await holder.release()
    await asyncio.gather(*waiters)
    assert order == ["openai-b", "task-a", "task-b"]


async def test_non_serial_engines_do_not_wait_for_the_device() -> None:
    scheduler = make_scheduler()
    holder = Holder(scheduler, "sd-a")
    await holder.entered.wait()
    async with asyncio.timeout(1):
        async with scheduler.lease("chat"):
            pass
    await holder.release()


async def test_interactive_wait_for_the_device_ends_in_503_with_retry_after() -> None:
    scheduler = make_scheduler(queue_timeout_s=0.05)
    holder = Holder(scheduler, "sd-a")
    await holder.entered.wait()
    with pytest.raises(Overloaded) as caught:
        async with scheduler.lease("sd-b"):
            pass
    assert not caught.value.queue_full and caught.value.retry_after >= 1
    assert caught.value.message == "Model 'sd-b' is busy; its turn did not come within 0.05 s."
    await holder.release()
    async with asyncio.timeout(1):  # the device is free again and no turn was left taken
        async with scheduler.lease("sd-b"):
            pass


async def test_background_work_waits_past_the_interactive_deadline() -> None:
    scheduler = make_scheduler(queue_timeout_s=0.05, background_timeout_s=5.0)
    holder = Holder(scheduler, "sd-a")
    await holder.entered.wait()
    entered = asyncio.Event()

    async def task_work() -> None:
        async with scheduler.lease("sd-a", priority=Priority.BACKGROUND):
            entered.set()

    waiter = asyncio.create_task(task_work())
    await asyncio.sleep(0.3)  # six interactive deadlines
    assert not waiter.done()
    await holder.release()
    await asyncio.wait_for(waiter, 2)
    assert entered.is_set()


async def test_background_work_also_has_a_deadline() -> None:
    scheduler = make_scheduler(background_timeout_s=0.05)
    holder = Holder(scheduler, "sd-a")
    await holder.entered.wait()
    with pytest.raises(Overloaded) as caught:
        async with scheduler.lease("sd-a", priority=Priority.BACKGROUND):
            pass
    assert not caught.value.queue_full
    await holder.release()


async def _gate_order(gate: FairGate, arrivals: list[tuple[str, Priority, float]]) -> list[str]:
    """Take the gate, queue (label, priority, delay before queuing) in order, release: the grant order."""
    await gate.acquire(Priority.INTERACTIVE, None, 1)
    order: list[str] = []

    async def wait(label: str, priority: Priority) -> None:
        await gate.acquire(priority, label[0], 1)
        order.append(label)
        gate.release()

    waiters = []
    for label, priority, delay in arrivals:
        await asyncio.sleep(delay)
        waiters.append(asyncio.create_task(wait(label, priority)))
        await asyncio.sleep(0)
    gate.release()
    await asyncio.gather(*waiters)
    return order


async def test_aged_background_work_goes_ahead_of_interactive_requests() -> None:
    background, interactive = Priority.BACKGROUND, Priority.INTERACTIVE
    arrivals = [("t1", background, 0.0), ("t2", background, 0.0), ("c1", interactive, 0.6), ("c2", interactive, 0)]
    # t1 and t2 have waited 0.6 s when the gate frees: past an aging of 0.5 s, oldest first.
    assert await _gate_order(FairGate(1, aging_s=0.5), arrivals) == ["t1", "t2", "c1", "c2"]
    # Without aging, interactive requests always go first.
    assert await _gate_order(FairGate(1), arrivals) == ["c1", "c2", "t1", "t2"]


async def test_aging_only_promotes_waiters_old_enough() -> None:
    background, interactive = Priority.BACKGROUND, Priority.INTERACTIVE
    arrivals = [("t1", background, 0.0), ("u1", background, 0.6), ("c1", interactive, 0.0)]
    # t1 has waited long enough; u1 has not, so c1 goes before it.
    assert await _gate_order(FairGate(1, aging_s=0.5), arrivals) == ["t1", "c1", "u1"]


# -- the device turn is the one guard: it lasts until the worker thread has stopped ----------------


class _Device:
    """What computes on one device: the most jobs seen computing at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.started = threading.Event()

    def enter(self) -> None:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.started.set()

    def leave(self) -> None:
        with self._lock:
            self.running -= 1


class ThreadedSerialEngine(SerialImageEngine):
    """Computes on a worker thread as the diffusers engines do; a cancelled job stops only at
    the end of its current step (50 ms later)."""

    def __init__(self, spec: ModelSpec, device: _Device) -> None:
        super().__init__(spec)
        self.on_device = device

    async def generate(self, job: ImageGeneration, progress: Any = None) -> ImageResult:
        def work(cancelled: threading.Event) -> None:
            self.on_device.enter()
            try:
                for _ in range(job.steps):
                    time.sleep(0.05)  # one step: a thread cannot be interrupted within it
                    if cancelled.is_set():
                        return
            finally:
                self.on_device.leave()

        await run_cancellable(work)
        return ImageResult(images=[], seed=job.seed)


async def test_a_cancelled_job_keeps_the_device_turn_until_its_thread_stops() -> None:
    device = _Device()
    host = DeviceMemory(name="cpu", total_bytes=1 << 30, budget_bytes=1 << 30)
    registry = ModelRegistry(SPECS[:2], {"fake": lambda spec: ThreadedSerialEngine(spec, device)})
    scheduler = Scheduler(registry, AdmissionPolicy(), [host])  # type: ignore[arg-type]
    job = ImageGeneration(prompt="p", width=8, height=8, steps=100, guidance_scale=1.0, seed=0)

    async def generate(model: str, steps: int) -> None:
        async with scheduler.lease(model) as engine:
            await engine.generate(msgspec.structs.replace(job, steps=steps))  # type: ignore[attr-defined]

    first = asyncio.create_task(generate("sd-a", 100))
    await asyncio.to_thread(device.started.wait, 5)
    second = asyncio.create_task(generate("sd-b", 1))
    await asyncio.sleep(0.01)  # waiting for the device turn
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert first.cancelled() and device.running == 0  # the cancellation waited for the thread
    await asyncio.wait_for(second, 5)
    assert device.most == 1  # never two jobs on the device at once
    [usage] = scheduler.report().devices
    assert (usage.serial_running, usage.serial_waiting) == (0, 0)


async def test_a_background_floor_makes_default_leases_wait_behind_interactive_ones() -> None:
    """Batch lines call the interactive services, whose leases name no priority: the context's
    floor (lease_priority_floor) queues them as background work."""
    scheduler = make_scheduler()
    holder = Holder(scheduler, "sd-a")
    await holder.entered.wait()
    order: list[str] = []

    async def use(label: str, floor: Priority) -> None:
        lease_priority_floor.set(floor)
        async with scheduler.lease("sd-a", owner=label):
            order.append(label)
            await asyncio.sleep(0)

    waiters = []
    for label, floor in [("batch", Priority.BACKGROUND), ("chat", Priority.INTERACTIVE)]:
        waiters.append(asyncio.create_task(use(label, floor)))
        await asyncio.sleep(0.01)  # queued in this order
    await holder.release()
    await asyncio.gather(*waiters)
    assert order == ["chat", "batch"]
