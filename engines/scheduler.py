"""Admission and residency: the single gate every engine call passes through.

``async with scheduler.lease(name) as engine`` resolves the model, waits for a slot in a
bounded queue, makes sure the model is loaded, and holds it for the duration of the
work. Engines that batch internally (vLLM) get many concurrent leases; the cap per
model bounds how many requests reach the engine at once, and the queue bounds how many
wait behind them.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
from opentelemetry import trace

from engines.base import Engine
from engines.registry import ModelRegistry
from schemas.errors import ApiError, ErrorCode

log = logging.getLogger("omniserve.scheduler")
# The global provider (a no-op until tracing is configured): the engines know nothing of the server.
_tracer = trace.get_tracer("omniserve.scheduler")


class Residency(enum.StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    RESIDENT = "resident"
    FAILED = "failed"


class AdmissionPolicy(msgspec.Struct, kw_only=True):
    max_concurrency: int = 256
    max_queue_depth: int = 512
    queue_timeout_s: float = 30.0


class _Slot:
    def __init__(self, engine: Engine, max_concurrency: int) -> None:
        self.engine = engine
        self.state = Residency.UNLOADED
        self.capacity = asyncio.Semaphore(max_concurrency)
        self.load_lock = asyncio.Lock()
        self.load_task: asyncio.Task[None] | None = None
        self.waiting = 0
        self.active = 0
        self.last_used = 0.0


def _model_attributes(slot: _Slot) -> dict[str, str]:
    return {"gen_ai.request.model": slot.engine.spec.name, "omniserve.engine": slot.engine.spec.engine}


class Scheduler:
    def __init__(self, registry: ModelRegistry, policy: AdmissionPolicy) -> None:
        self.registry = registry
        self.policy = policy
        self._slots: dict[str, _Slot] = {engine.spec.name: _Slot(engine, policy.max_concurrency) for engine in registry}

    def _slot(self, name: str) -> _Slot:
        engine = self.registry.get(name)
        if engine is None:
            raise ApiError(ErrorCode.MODEL_NOT_FOUND, f"The model '{name}' does not exist.", param="model")
        return self._slots[engine.spec.name]

    def engine(self, name: str) -> Engine:
        """The engine for a name, without admission (for metadata such as context length)."""
        return self._slot(name).engine

    def residency(self) -> dict[str, Residency]:
        return {name: slot.state for name, slot in self._slots.items()}

    def queue_state(self) -> dict[str, tuple[int, int]]:
        """Per model: requests waiting for a slot, and requests holding one (for /metrics)."""
        return {name: (slot.waiting, slot.active) for name, slot in self._slots.items()}

    def all_resident(self) -> bool:
        return all(slot.state is Residency.RESIDENT for slot in self._slots.values())

    async def load(self, name: str) -> None:
        slot = self._slot(name)
        async with slot.load_lock:
            if slot.state is Residency.RESIDENT:
                return
            slot.state = Residency.LOADING
            started = time.monotonic()
            try:
                with _tracer.start_as_current_span("model load", attributes=_model_attributes(slot)):
                    await slot.engine.load()
            except Exception:
                slot.state = Residency.FAILED
                log.exception("model %s failed to load", name)
                raise
            slot.state = Residency.RESIDENT
            log.info("model %s resident after %.1f s", name, time.monotonic() - started)

    async def load_all(self) -> None:
        # One at a time: loading contends for the same cores and memory.
        for name in self._slots:
            try:
                await self.load(name)
            except Exception:
                continue  # recorded as FAILED; /ready reports it

    async def unload_all(self) -> None:
        for slot in self._slots.values():
            try:
                with _tracer.start_as_current_span("model unload", attributes=_model_attributes(slot)):
                    await slot.engine.unload()
            except Exception:
                log.exception("model %s failed to unload", slot.engine.spec.name)
            slot.state = Residency.UNLOADED

    def _check_queue(self, slot: _Slot) -> None:
        if slot.capacity.locked() and slot.waiting >= self.policy.max_queue_depth:
            raise ApiError(
                ErrorCode.QUEUE_FULL,
                f"Model '{slot.engine.spec.name}' has {slot.waiting} requests waiting; try again shortly.",
                retry_after=1.0,
            )

    def check_admission(self, name: str) -> None:
        """Raise QUEUE_FULL now if a lease would be refused: streaming routes call this
        before their first byte, so the refusal is a 429 rather than an in-stream error."""
        self._check_queue(self._slot(name))

    async def _admit(self, slot: _Slot) -> None:
        if not slot.capacity.locked():
            await slot.capacity.acquire()  # free slot: no waiting, no timer
            return
        self._check_queue(slot)
        slot.waiting += 1
        try:
            # Only a request that finds every slot taken gets this span: its absence means no wait.
            attributes: dict[str, str | int] = {**_model_attributes(slot), "omniserve.queue.waiting": slot.waiting}
            with _tracer.start_as_current_span("scheduler queue wait", attributes=attributes):
                await asyncio.wait_for(slot.capacity.acquire(), self.policy.queue_timeout_s)
        except TimeoutError:
            raise ApiError(
                ErrorCode.SERVICE_NOT_AVAILABLE,
                f"Model '{slot.engine.spec.name}' is busy; no slot freed within {self.policy.queue_timeout_s:g} s.",
                retry_after=self.policy.queue_timeout_s / 2,
            ) from None
        finally:
            slot.waiting -= 1

    async def _make_resident(self, slot: _Slot) -> None:
        if slot.state is Residency.RESIDENT:
            return
        if slot.state is Residency.FAILED:
            raise ApiError(
                ErrorCode.SERVICE_NOT_AVAILABLE,
                f"Model '{slot.engine.spec.name}' failed to load; see the server log.",
                retry_after=30.0,
            )
        if slot.load_task is None or slot.load_task.done():
            slot.load_task = asyncio.ensure_future(self.load(slot.engine.spec.name))
        try:
            # Shielded: a request that gives up waiting must not cancel the load itself.
            await asyncio.wait_for(asyncio.shield(slot.load_task), self.policy.queue_timeout_s)
        except TimeoutError:
            raise ApiError(
                ErrorCode.SERVICE_NOT_AVAILABLE,
                f"Model '{slot.engine.spec.name}' is still loading.",
                retry_after=5.0,
            ) from None
        except ApiError:
            raise
        except Exception:
            raise ApiError(
                ErrorCode.SERVICE_NOT_AVAILABLE,
                f"Model '{slot.engine.spec.name}' failed to load; see the server log.",
                retry_after=30.0,
            ) from None

    async def resident_engine(self, name: str) -> Engine:
        """The engine, loaded, without taking a slot: for validating a request (tokenizer,
        context length) before it queues. Work itself still goes through ``lease``."""
        slot = self._slot(name)
        await self._make_resident(slot)
        return slot.engine

    @asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[Engine]:
        slot = self._slot(name)
        await self._admit(slot)
        try:
            await self._make_resident(slot)
            slot.active += 1
            try:
                yield slot.engine
            finally:
                slot.active -= 1
                slot.last_used = time.monotonic()
        finally:
            slot.capacity.release()
