"""Admission and residency: the single gate every engine call passes through.

``async with scheduler.lease(name, TextGenerationEngine) as engine`` resolves the model,
checks from the catalog that its kind serves that engine protocol (``WrongModelKind``
otherwise, before anything loads), waits for a slot in a bounded queue, makes sure the model
is loaded, and holds it, typed as asked, for the duration of the work. Engines that batch
internally (vLLM) get many concurrent leases; the cap per model bounds how many requests
reach the engine at once, and the queue bounds how many wait behind them.

Each model lives on one device (host memory or a GPU) with a memory budget. Loading a
model that does not fit evicts idle models on that device, least recently used first;
a model with a lease or a waiting request is never evicted, nor one the catalog pins.
When no room can be made the load waits for leases to end, as long as a request wants it.
An engine that can sleep (``SleepableEngine``) is evicted by sleeping it: its device memory
is freed, its weights kept on the host, and the next lease wakes it instead of reloading.

Requests waiting for a slot are served by priority (interactive before background task
work), and within a priority round-robin by owner (the API key), first come first served
per owner, so one key's backlog does not hold back another key's single request. Background
work that has waited `background_aging_s` goes first, so it is never starved, and it waits up
to `background_timeout_s` rather than the interactive `queue_timeout_s`.

Engines that compute one job at a time on their device (``DeviceSerialEngine``: the diffusers
pipelines, the upscaler, the safety classifier) also take turns on the device here, through the
same ordering. The device turn is the only guard of such a device: those engines hold no lock
of their own, so they compute only inside a lease.

Among replicas, a server may run only some of the catalog (``served``): every model stays known
for validation (``spec``, ``engine``), but only a served one is planned, loaded or leased here;
the others are refused with ``ModelNotServedHere`` before anything waits or loads.

Failures reach the caller as ``engines.errors`` domain errors; the server maps them to its API.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar, cast, overload

from opentelemetry import trace

from engines.admission import AdmissionPolicy, FairGate, Priority, lease_owner, lease_priority_floor
from engines.base import (
    AdapterEngine,
    DeviceSerialEngine,
    Engine,
    ModelSpec,
    SleepableEngine,
    TextAdapter,
    TextGenerationEngine,
    served_kinds,
)
from engines.devices import HOST, DeviceMemory, MemoryProbe, model_device
from engines.errors import (
    EngineError,
    InvalidJob,
    ModelDoesNotFit,
    ModelInUse,
    ModelLoadFailed,
    ModelNotFound,
    ModelNotServedHere,
    Overloaded,
    WrongModelKind,
)
from engines.registry import ModelRegistry
from engines.residency import HOLDS_MEMORY, DeviceUsage, ModelResidency, Residency, SchedulerReport
from engines.sizing import Footprint, FootprintTooLarge, PlannedEngine, SizingPolicy, plan_footprint

log = logging.getLogger("omniserve.scheduler")
# The global provider (a no-op until tracing is configured): the engines know nothing of the server.
_tracer = trace.get_tracer("omniserve.scheduler")

# Longest pause between two sweeps for idle models.
_IDLE_SWEEP_MAX_S = 30.0

# The engine protocol a caller asks for; what it gets back is typed so.
E = TypeVar("E", bound=Engine)


class NoRoomError(Exception):
    """A model could not be placed: its device is full of models in use."""


class _Slot:
    def __init__(self, engine: Engine, policy: AdmissionPolicy, device: str) -> None:
        self.engine = engine
        self.device = device
        self.pinned = engine.spec.pinned
        self.serial = isinstance(engine, DeviceSerialEngine)
        self.state = Residency.UNLOADED
        self.capacity = FairGate(policy.max_concurrency, aging_s=policy.background_aging_s)
        self.load_lock = asyncio.Lock()
        self.load_task: asyncio.Task[None] | None = None
        self.active = 0
        # Leases under way, from admission to release: such a model is never evicted.
        self.demand = 0
        self.last_used: float | None = None
        self.measured_bytes = 0
        # An undeclared model's footprint planned from its files (engines/sizing.py), used
        # until a load measures it.
        self.planned: Footprint | None = None
        self.loads = 0
        self.last_load_s: float | None = None
        self.total_load_s = 0.0
        self.evictions: dict[str, int] = {}
        self.sleeps = 0
        self.wakes = 0
        self.total_wake_s = 0.0

    @property
    def name(self) -> str:
        return self.engine.spec.name

    @property
    def waiting(self) -> int:
        return self.capacity.waiting

    @property
    def can_sleep(self) -> bool:
        return isinstance(self.engine, SleepableEngine) and self.engine.supports_sleep

    @property
    def footprint(self) -> int:
        planned = self.planned.total_bytes if self.planned else 0
        return self.engine.spec.memory_bytes or self.measured_bytes or planned

    @property
    def footprint_source(self) -> str:
        if self.engine.spec.memory_bytes:
            return "declared"
        if self.loads and (self.measured_bytes or not self.planned):
            return "measured"
        return "estimated" if self.planned else "unknown"

    @property
    def evictable(self) -> bool:
        return self.state is Residency.RESIDENT and not self.pinned and self.demand == 0


def _model_attributes(slot: _Slot) -> dict[str, str]:
    return {"gen_ai.request.model": slot.engine.spec.name, "omniserve.engine": slot.engine.spec.engine}


class Scheduler:
    def __init__(
        self,
        registry: ModelRegistry,
        policy: AdmissionPolicy,
        devices: list[DeviceMemory] | None = None,
        sizing: SizingPolicy | None = None,
        served: Callable[[str], bool] | None = None,
    ) -> None:
        self.registry = registry
        self.policy = policy
        # Which catalog models (canonical names) run here; None: all of them.
        self._served = served
        # Without devices nothing is budgeted: every model fits.
        self.devices = {device.name: device for device in devices or []}
        # vLLM takes its device from the library's own detection: the first GPU when there is one.
        default_device = next((name for name in self.devices if name != HOST), HOST)
        self._slots: dict[str, _Slot] = {
            engine.spec.name: _Slot(engine, policy, model_device(engine, default_device)) for engine in registry
        }
        # Per device, the turns of the device-serial engines there (one job at a time).
        self._device_turns = {
            slot.device: FairGate(1, aging_s=policy.background_aging_s) for slot in self._slots.values() if slot.serial
        }
        # Placement decisions (what fits, what to evict) are made one at a time.
        self._placement = asyncio.Lock()
        # Loads run one at a time: they contend for the same cores and memory, and a
        # measured footprint must be one model's alone.
        self._loading = asyncio.Lock()
        # Set whenever memory may have been freed or a model became evictable.
        self._room_freed = asyncio.Event()
        self._startup: set[str] = set()
        self._startup_done = False
        self._sweeper: asyncio.Task[None] | None = None
        self._plan_footprints(sizing or SizingPolicy())

    def _plan_footprints(self, sizing: SizingPolicy) -> None:
        """Plan every undeclared model on a budgeted device, and hand engines that size
        themselves (vLLM) their plan. FootprintTooLarge, before anything loads, for models
        that could never fit their device's whole budget."""
        too_large: dict[str, tuple[Footprint, int]] = {}
        for slot in self._slots.values():
            if not self.serves(slot.name):
                continue  # it runs on other replicas, whose devices it must fit
            budget = self.devices.get(slot.device)
            if budget is None:
                continue  # nothing is budgeted there: an engine sizes itself alone
            slot.planned = plan_footprint(slot.engine.spec, device=slot.device, budget=budget, policy=sizing)
            if slot.planned is None:
                continue
            if slot.planned.total_bytes > budget.budget_bytes:
                too_large[slot.name] = (slot.planned, budget.budget_bytes)
            if isinstance(slot.engine, PlannedEngine):
                slot.engine.use_footprint(slot.planned)
            log.info("model %s: planned footprint %d MiB on %s", slot.name, slot.footprint >> 20, slot.device)
        if too_large:
            raise FootprintTooLarge(too_large)

    def _slot(self, name: str, kind: type[Engine] = Engine) -> _Slot:
        """The model's slot, if the catalog has it and its kind serves the protocol `kind`.

        Decided from the catalog alone: a wrong kind is refused before any demand, load or
        eviction."""
        engine = self.registry.get(name)
        if engine is None:
            raise ModelNotFound(name)
        wanted = served_kinds(kind)
        if engine.spec.kind not in wanted:
            raise WrongModelKind(name, engine.spec.kind, wanted)
        return self._slots[engine.spec.name]

    def serves(self, name: str) -> bool:
        """Whether the catalog model `name` (its canonical name) runs on this server."""
        return self._served is None or self._served(name)

    def served_models(self) -> list[str]:
        """The canonical names of the catalog models that run on this server."""
        return [name for name in self._slots if self.serves(name)]

    def _served_slot(self, name: str, kind: type[Engine] = Engine) -> _Slot:
        """The model's slot, as `_slot`, for work that runs it here: ModelNotServedHere when
        it runs only on other replicas."""
        slot = self._slot(name, kind)
        if not self.serves(slot.name):
            raise ModelNotServedHere(slot.name)
        return slot

    def spec(self, name: str) -> ModelSpec:
        """The catalog entry for a name or alias."""
        return self._slot(name).engine.spec

    @overload
    def engine(self, name: str) -> Engine: ...

    @overload
    def engine(self, name: str, kind: type[E]) -> E: ...

    def engine(self, name: str, kind: type[Engine] = Engine) -> Engine:
        """The engine for a name as a `kind` engine, neither loaded nor leased (for metadata
        such as options or context length)."""
        return self._slot(name, kind).engine

    def adapter_name(self, name: str) -> str | None:
        """``name`` when it names a LoRA adapter (served by the model it adapts), else None."""
        return name if self.registry.adapter_base(name) is not None else None

    def residency(self) -> dict[str, Residency]:
        return {name: slot.state for name, slot in self._slots.items()}

    def queue_state(self) -> dict[str, tuple[int, int]]:
        """Per model: requests waiting (for a slot, a load or a device turn), and requests
        running (for /metrics)."""
        return {name: (slot.demand - slot.active, slot.active) for name, slot in self._slots.items()}

    def all_resident(self) -> bool:
        return all(slot.state is Residency.RESIDENT for slot in self._slots.values())

    def ready(self) -> bool:
        """Startup loading is over, every pinned model is resident, and none of the models
        loaded at startup failed. Models left to load on first use do not count."""
        if not self._startup_done:
            return False
        slots = self._slots.values()
        if any(slot.pinned and slot.state is not Residency.RESIDENT and self.serves(slot.name) for slot in slots):
            return False
        return not any(slot.name in self._startup and slot.state is Residency.FAILED for slot in slots)

    # -- memory --------------------------------------------------------------------------------

    def used_bytes(self, device: str) -> int:
        return sum(s.footprint for s in self._slots.values() if s.device == device and s.state in HOLDS_MEMORY)

    def _fits(self, slot: _Slot) -> bool:
        budget = self.devices.get(slot.device)
        return budget is None or self.used_bytes(slot.device) + slot.footprint <= budget.budget_bytes

    def _victims(self, slot: _Slot) -> list[_Slot] | None:
        """The idle models to evict, least recently used first, so that `slot` fits; None
        when evicting every idle model would not be enough."""
        budget = self.devices[slot.device].budget_bytes
        others = [s for s in self._slots.values() if s is not slot and s.device == slot.device]
        holding = [s for s in others if s.state in HOLDS_MEMORY]
        candidates = sorted((s for s in holding if s.evictable), key=lambda s: s.last_used or 0.0)
        excess = self.used_bytes(slot.device) + slot.footprint - budget
        victims: list[_Slot] = []
        for candidate in candidates:
            if excess <= 0:
                break
            victims.append(candidate)
            excess -= candidate.footprint
        if excess <= 0:
            return victims
        if len(victims) == len(holding):
            # Larger than the whole budget: it may only run alone on its device.
            log.warning(
                "model %s (%d bytes) exceeds the budget of %s; loading it alone", slot.name, slot.footprint, slot.device
            )
            return victims
        return None

    async def _place(self, slot: _Slot, *, evict: bool) -> None:
        """Reserve room for `slot` (its state becomes LOADING), evicting idle models if
        `evict`. Without room, wait while some request still wants the model (each gives
        up at its own deadline); fail at once without `evict` or without such a request."""
        while True:
            async with self._placement:
                victims = [] if self._fits(slot) else (self._victims(slot) if evict else None)
                if victims is not None:
                    # Marked before any await, so no lease can start on a model being evicted.
                    for victim in victims:
                        victim.state = Residency.UNLOADING
                    for victim in victims:
                        log.info("evicting %s (least recently used) to load %s", victim.name, slot.name)
                        await self._evict(victim, reason="lru")
                    slot.state = Residency.LOADING
                    return
            if not evict or slot.demand == 0:
                raise NoRoomError(f"no room for model {slot.name} on {slot.device}")
            self._room_freed.clear()
            await self._room_freed.wait()

    async def _evict(self, slot: _Slot, *, reason: str) -> None:
        """Free the model's device memory: sleep it where the engine can, else unload it."""
        if not slot.can_sleep:
            await self._unload(slot, reason=reason)
            return
        slot.state = Residency.UNLOADING
        try:
            with _tracer.start_as_current_span("model sleep", attributes=_model_attributes(slot)):
                await cast(SleepableEngine, slot.engine).sleep()
        except Exception:
            log.exception("model %s failed to sleep; unloading it", slot.name)
            await self._unload(slot, reason=reason)
            return
        slot.state = Residency.SLEEPING
        slot.sleeps += 1
        slot.evictions[reason] = slot.evictions.get(reason, 0) + 1
        self._room_freed.set()

    async def _unload(self, slot: _Slot, *, reason: str | None) -> None:
        slot.state = Residency.UNLOADING
        try:
            with _tracer.start_as_current_span("model unload", attributes=_model_attributes(slot)):
                await slot.engine.unload()
        except Exception:
            log.exception("model %s failed to unload", slot.name)
        slot.state = Residency.UNLOADED
        if reason is not None:
            slot.evictions[reason] = slot.evictions.get(reason, 0) + 1
        self._room_freed.set()

    # -- loading -------------------------------------------------------------------------------

    async def load(self, name: str, *, evict: bool = True) -> None:
        slot = self._served_slot(name)
        async with slot.load_lock:
            if slot.state is Residency.RESIDENT:
                return
            asleep = slot.state is Residency.SLEEPING
            await self._place(slot, evict=evict)
            async with self._loading:
                if asleep and await self._wake(slot):
                    return
                probe = MemoryProbe(slot.device) if slot.device in self.devices else None
                before = probe.used_bytes() if probe else 0
                started = time.monotonic()
                try:
                    with _tracer.start_as_current_span("model load", attributes=_model_attributes(slot)):
                        await slot.engine.load()
                except Exception:
                    slot.state = Residency.FAILED
                    self._room_freed.set()
                    log.exception("model %s failed to load", name)
                    raise
                slot.last_load_s = time.monotonic() - started
                slot.total_load_s += slot.last_load_s
                if not slot.engine.spec.memory_bytes:
                    # The engine's own count where it keeps one, else what the device lost.
                    reported = slot.engine.memory_bytes()
                    measured = probe.used_bytes() - before if probe else 0
                    slot.measured_bytes = reported if reported > 0 else max(measured, 0)
            slot.loads += 1
            slot.last_used = time.monotonic()
            slot.state = Residency.RESIDENT
            log.info("model %s resident after %.1f s (%d MiB)", name, slot.last_load_s, slot.footprint >> 20)

    async def _wake(self, slot: _Slot) -> bool:
        """Wake a sleeping model whose room is reserved; False (and unloaded) if it fails."""
        started = time.monotonic()
        try:
            with _tracer.start_as_current_span("model wake", attributes=_model_attributes(slot)):
                await cast(SleepableEngine, slot.engine).wake()
        except Exception:
            log.exception("model %s failed to wake; loading it again", slot.name)
            await self._unload(slot, reason=None)
            slot.state = Residency.LOADING  # the room stays reserved for the load
            return False
        elapsed = time.monotonic() - started
        slot.wakes += 1
        slot.total_wake_s += elapsed
        slot.last_used = time.monotonic()
        slot.state = Residency.RESIDENT
        log.info("model %s awake after %.1f s", slot.name, elapsed)
        return True

    async def load_all(self) -> None:
        """Pinned models first, then the others in catalog order while they fit without
        evicting anything; what does not fit loads on first use."""
        for slot in sorted(self._slots.values(), key=lambda s: not s.pinned):
            if not self.serves(slot.name):
                continue
            if not slot.pinned and not self._fits(slot):
                log.info("model %s does not fit the budget of %s now; it loads on first use", slot.name, slot.device)
                continue
            self._startup.add(slot.name)
            try:
                await self.load(slot.name, evict=slot.pinned)
            except NoRoomError:
                self._startup.discard(slot.name)
                log.info("model %s does not fit the budget of %s now; it loads on first use", slot.name, slot.device)
            except Exception:
                continue  # recorded as FAILED; /ready reports it
        self._startup_done = True

    async def unload_all(self) -> None:
        for slot in self._slots.values():
            await self._unload(slot, reason=None)

    async def unload_idle(self) -> list[str]:
        """Unload every evictable model unused for the idle TTL; the names unloaded."""
        if self.policy.idle_ttl_s <= 0:
            return []
        async with self._placement:
            now = time.monotonic()
            idle = [
                s
                for s in self._slots.values()
                if (s.evictable or (s.state is Residency.SLEEPING and s.demand == 0))
                and s.last_used is not None
                and now - s.last_used >= self.policy.idle_ttl_s
            ]
            for slot in idle:
                slot.state = Residency.UNLOADING
            for slot in idle:
                log.info("unloading %s: idle for %.0f s", slot.name, now - (slot.last_used or now))
                await self._unload(slot, reason="idle")
        return [slot.name for slot in idle]

    async def _sweep_idle(self) -> None:
        interval = min(self.policy.idle_ttl_s / 4, _IDLE_SWEEP_MAX_S)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.unload_idle()
            except Exception:
                log.exception("idle sweep failed")

    def start(self) -> None:
        """Start the idle sweep (with an idle TTL set); `stop` ends it."""
        if self.policy.idle_ttl_s > 0 and self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_idle())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None

    # -- admission -----------------------------------------------------------------------------

    def _check_queue(self, slot: _Slot, weight: int = 1) -> None:
        if slot.capacity.locked(weight) and slot.waiting >= self.policy.max_queue_depth:
            raise Overloaded(
                f"Model '{slot.engine.spec.name}' has {slot.waiting} requests waiting; try again shortly.",
                retry_after=1.0,
                queue_full=True,
            )

    def check_admission(self, name: str) -> None:
        """Raise Overloaded (queue full) now if a lease would be refused: streaming routes call
        this before their first byte, so the refusal is a 429 rather than an in-stream error."""
        self._check_queue(self._served_slot(name))

    async def _take_turn(
        self,
        gate: FairGate,
        slot: _Slot,
        priority: Priority,
        owner: str | None,
        deadline: float,
        span: str,
        weight: int = 1,
    ) -> None:
        """Acquire `weight` of `gate` for `slot`'s lease by `deadline` (monotonic), or raise Overloaded."""
        if not gate.locked(weight):
            await gate.acquire(priority, owner, 0.0, weight)  # free: no wait
            return
        timeout = max(deadline - time.monotonic(), 0.0)
        try:
            # Only a request that finds the gate taken gets this span: its absence means no wait.
            attributes: dict[str, str | int] = {
                **_model_attributes(slot),
                "omniserve.queue.waiting": gate.waiting + 1,
                "omniserve.queue.priority": priority.name.lower(),
            }
            with _tracer.start_as_current_span(span, attributes=attributes):
                await gate.acquire(priority, owner, timeout, weight)
        except TimeoutError:
            waited = self.policy.timeout_for(priority)
            raise Overloaded(
                f"Model '{slot.engine.spec.name}' is busy; its turn did not come within {waited:g} s.",
                retry_after=max(min(waited, self.policy.queue_timeout_s) / 2, 1.0),
            ) from None

    async def _admit(self, slot: _Slot, priority: Priority, owner: str | None, deadline: float, weight: int) -> None:
        if slot.capacity.locked(weight):
            self._check_queue(slot, weight)
        await self._take_turn(slot.capacity, slot, priority, owner, deadline, "scheduler queue wait", weight)

    @asynccontextmanager
    async def _device_turn(
        self, slot: _Slot, priority: Priority, owner: str | None, deadline: float
    ) -> AsyncIterator[None]:
        """For a device-serial engine, hold its device's turn for the block; else nothing."""
        if not slot.serial:
            yield
            return
        turns = self._device_turns[slot.device]
        await self._take_turn(turns, slot, priority, owner, deadline, "scheduler device wait")
        try:
            yield
        finally:
            turns.release()

    async def _make_resident(self, slot: _Slot, deadline: float | None = None) -> None:
        if slot.state is Residency.RESIDENT:
            return
        if slot.state is Residency.FAILED:
            raise Overloaded(
                f"Model '{slot.engine.spec.name}' failed to load; see the server log.",
                retry_after=30.0,
            )
        if slot.load_task is None or slot.load_task.done():
            slot.load_task = asyncio.ensure_future(self.load(slot.engine.spec.name))
        try:
            # Shielded: a request that gives up waiting must not cancel the load itself.
            timeout = self.policy.queue_timeout_s if deadline is None else max(deadline - time.monotonic(), 0.0)
            await asyncio.wait_for(asyncio.shield(slot.load_task), timeout)
        except (TimeoutError, NoRoomError):
            if slot.state is Residency.LOADING:
                raise Overloaded(
                    f"Model '{slot.engine.spec.name}' is still loading.",
                    retry_after=5.0,
                ) from None
            raise Overloaded(
                f"Model '{slot.engine.spec.name}' does not fit in memory while other models are in use.",
                retry_after=max(self.policy.queue_timeout_s / 2, 1.0),
            ) from None
        except EngineError:
            raise
        except Exception:
            raise Overloaded(
                f"Model '{slot.engine.spec.name}' failed to load; see the server log.",
                retry_after=30.0,
            ) from None

    @overload
    async def resident_engine(self, name: str) -> Engine: ...

    @overload
    async def resident_engine(self, name: str, kind: type[E]) -> E: ...

    async def resident_engine(self, name: str, kind: type[Engine] = Engine) -> Engine:
        """The engine, loaded, as a `kind` engine, without taking a slot: for validating a
        request (tokenizer, context length) before it queues. Work itself still goes through
        ``lease``. A model of the wrong kind is refused before anything loads."""
        slot = self._served_slot(name, kind)
        slot.demand += 1
        try:
            await self._make_resident(slot)
        finally:
            self._release_demand(slot)
        return slot.engine

    @overload
    def lease(
        self, name: str, *, priority: Priority = ..., owner: str | None = ..., weight: int = ...
    ) -> AbstractAsyncContextManager[Engine]: ...

    @overload
    def lease(
        self, name: str, kind: type[E], *, priority: Priority = ..., owner: str | None = ..., weight: int = ...
    ) -> AbstractAsyncContextManager[E]: ...

    def lease(
        self,
        name: str,
        kind: type[Engine] = Engine,
        *,
        priority: Priority = Priority.INTERACTIVE,
        owner: str | None = None,
        weight: int = 1,
    ) -> AbstractAsyncContextManager[Any]:
        """Hold the model, loaded, as a `kind` engine for the block. Waiters for a slot are
        served by `priority`, then round-robin by `owner` (an API key id; by default the
        context's `lease_owner`). `weight`: how many of the model's `max_concurrency` slots
        the work takes (the sequences of a request an engine batches; more than all of them
        takes all of them). A model of the wrong kind is refused at once: nothing waits,
        loads or is evicted for it."""
        return self._lease(name, kind, priority, owner, weight)

    @asynccontextmanager
    async def _lease(
        self, name: str, kind: type[Engine], priority: Priority, owner: str | None, weight: int
    ) -> AsyncIterator[Engine]:
        slot = self._served_slot(name, kind)
        owner = owner if owner is not None else lease_owner.get()
        priority = max(priority, lease_priority_floor.get())
        # One deadline for the whole wait: a slot, the load, the device turn.
        deadline = time.monotonic() + self.policy.timeout_for(priority)
        slot.demand += 1
        try:
            await self._admit(slot, priority, owner, deadline, weight)
            try:
                await self._make_resident(slot, deadline)
                async with self._device_turn(slot, priority, owner, deadline):
                    slot.active += 1
                    try:
                        yield slot.engine
                    finally:
                        slot.active -= 1
                        slot.last_used = time.monotonic()
            finally:
                slot.capacity.release(weight)
        finally:
            self._release_demand(slot)

    def _release_demand(self, slot: _Slot) -> None:
        slot.demand -= 1
        if slot.demand == 0:
            # The model may be evicted now, and a load waiting for room may have no requester left.
            self._room_freed.set()

    # -- operator actions (the admin API) ------------------------------------------------------
    #
    # Each takes a name or alias and returns the catalog name. Changes hold until the process
    # ends: a restart starts again from the catalog's pins.

    async def load_model(self, name: str) -> str:
        """Load (or wake) the model now, evicting idle unpinned models, least recently used
        first, to make room. ModelDoesNotFit at once when pinned models and models in use
        leave no room; ModelLoadFailed when the engine fails (a failed model is tried again).
        The load runs shielded: a caller that gives up does not cancel it halfway."""
        slot = self._served_slot(name)
        await self._operator_load(slot)
        return slot.name

    async def _operator_load(self, slot: _Slot) -> None:
        if slot.state is Residency.RESIDENT:
            return
        if slot.load_task is None or slot.load_task.done():
            slot.load_task = asyncio.ensure_future(self.load(slot.name))
        try:
            await asyncio.shield(slot.load_task)
        except NoRoomError:
            raise ModelDoesNotFit(
                f"The model '{slot.name}' does not fit on {slot.device}: pinned models and models in use "
                "hold its budget. Unpin or unload some first."
            ) from None
        except Exception:
            raise ModelLoadFailed(slot.name) from None

    async def unload_model(self, name: str) -> str:
        """Unload the model now, freeing its memory (the host copy of a sleeping one too), and
        unpin it: a pinned model is loaded by definition. ModelInUse while requests hold or
        wait for it, or while it is loading or unloading: the admin API does not hold new
        requests back to drain a model; its caller tries again."""
        slot = self._slot(name)
        async with self._placement:
            loading = slot.load_task is not None and not slot.load_task.done()
            if loading or slot.state in (Residency.LOADING, Residency.UNLOADING):
                raise ModelInUse(f"The model '{slot.name}' is loading or unloading; try again when it has settled.")
            if slot.state is Residency.UNLOADED:
                slot.pinned = False
                return slot.name
            if slot.demand:
                raise ModelInUse(
                    f"The model '{slot.name}' has {slot.demand} requests running or waiting; try again when idle."
                )
            slot.pinned = False
            # Checked and marked with no await between: no lease starts on it from here on.
            reason = None if slot.state is Residency.FAILED else "admin"
            log.info("unloading %s: asked by an operator", slot.name)
            await self._unload(slot, reason=reason)
        return slot.name

    async def pin_model(self, name: str) -> str:
        """Load the model as ``load_model`` does and keep it loaded: never evicted, never
        unloaded for idleness, and required by ``ready``. It stays unpinned if it cannot load."""
        slot = self._served_slot(name)
        was_pinned = slot.pinned
        # Pinned only once resident: a pinned model that is not resident makes the server unready.
        await self._operator_load(slot)
        slot.pinned = True
        if slot.state is not Residency.RESIDENT:  # evicted between the load and the pin
            try:
                await self._operator_load(slot)
            except BaseException:
                slot.pinned = was_pinned
                raise
        return slot.name

    def unpin_model(self, name: str) -> str:
        """Let the model be evicted and unloaded for idleness again; it stays loaded for now."""
        slot = self._slot(name)
        slot.pinned = False
        # It may be evicted now, for a load waiting for room.
        self._room_freed.set()
        return slot.name

    async def add_adapter(self, base: str, adapter: TextAdapter) -> str:
        """Serve a LoRA adapter of the chat model ``base`` under ``adapter.name``, until the
        process ends. The same adapter again is a no-op; ModelInUse when the name is taken by a
        model, an alias or another adapter; InvalidJob when the model or the adapter cannot."""
        if self.registry.adapter_base(base) is not None:
            raise InvalidJob(f"'{base}' is itself an adapter: name the model it adapts.", "model")
        slot = self._slot(base, TextGenerationEngine)
        engine = slot.engine
        if not isinstance(engine, AdapterEngine):
            raise InvalidJob(f"The model '{slot.name}' does not take LoRA adapters.", "model")
        if self.registry.adapter_base(adapter.name) == slot.name and adapter in engine.adapters():
            return slot.name
        # Claimed before any await: two calls for one name cannot both pass.
        if not self.registry.claim_adapter(adapter.name, slot.name):
            raise ModelInUse(f"The name '{adapter.name}' is already served (a model, an alias or an adapter).")
        try:
            await engine.add_adapter(adapter)
        except BaseException:
            self.registry.release_adapter(adapter.name)
            raise
        return slot.name

    def remove_adapter(self, name: str) -> str:
        """Stop serving the adapter ``name`` (a catalog one comes back at the next start);
        requests already running with it finish. Returns its base model's name."""
        base = self.registry.adapter_base(name)
        if base is None:
            raise ModelNotFound(name)
        engine = self._slots[base].engine
        if isinstance(engine, AdapterEngine):
            engine.remove_adapter(name)
        self.registry.release_adapter(name)
        return base

    # -- visibility ----------------------------------------------------------------------------

    def report(self) -> SchedulerReport:
        now = time.monotonic()
        models = {}
        for name, slot in self._slots.items():
            models[name] = ModelResidency(
                state=slot.state,
                device=slot.device,
                pinned=slot.pinned,
                footprint_bytes=slot.footprint,
                footprint_source=slot.footprint_source,
                idle_s=None if slot.last_used is None or slot.active else round(now - slot.last_used, 3),
                leases=slot.active,
                queue_depth=slot.demand - slot.active,
                loads=slot.loads,
                last_load_s=slot.last_load_s,
                total_load_s=slot.total_load_s,
                evictions=dict(slot.evictions),
                sleeps=slot.sleeps,
                wakes=slot.wakes,
                total_wake_s=slot.total_wake_s,
            )
        devices = [
            DeviceUsage(
                name=device.name,
                total_bytes=device.total_bytes,
                budget_bytes=device.budget_bytes,
                used_bytes=self.used_bytes(device.name),
                serial_running=turns.held if (turns := self._device_turns.get(device.name)) else 0,
                serial_waiting=turns.waiting if turns else 0,
            )
            for device in self.devices.values()
        ]
        return SchedulerReport(devices=devices, models=models, idle_ttl_s=self.policy.idle_ttl_s)
