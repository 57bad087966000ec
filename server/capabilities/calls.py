"""The one way the server calls an engine: typed lease, GenAI span, metering, error mapping.

    async with engine_call(scheduler, model, TextGenerationEngine, "chat", charge=charge) as (engine, record):
        async for step in engine.generate(...):
            record.observe(step)

Nested from the outside in: the charge (reserved before any wait, settled to what was
produced, refunded on an error), the inference record (span and gen_ai metrics, so queue
wait and model load count in its duration), the engine-error mapping (an engine's domain
error becomes the family's ApiError, its field named by the adapter's `WireNames`), and the
scheduler's lease of the model as the engine kind asked for. Cancellation needs nothing
here: a client that leaves cancels its request's task (server/cancellation.py), which
unwinds this block, and the engines abort on cancellation.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Any, TypeVar

from engines.admission import Priority
from engines.base import Engine, SamplingOptions
from engines.errors import EngineError
from engines.scheduler import Scheduler
from schemas.errors import ApiError, ErrorCode
from server.accounts import Charge
from server.errors import engine_api_error
from server.telemetry.genai import Inference

E = TypeVar("E", bound=Engine)
_INDEX = re.compile(r"\[(\d+)\]")
# What engine_call returns: entered, the engine (narrowed to its kind) and its record.
EngineCall = AbstractAsyncContextManager[tuple[E, Inference]]


class WireNames:
    """How one API family names the capability's fields: a small table, and a prefix for the
    rest (``request.`` for the /v3 bodies). Errors name fields through it, so the client
    sees its own field names. A field of a list item is written with its index
    (``controlnets[1].name``); its table entry has ``[]`` there and ``{}`` where the wire
    name takes the index (``"controlnets[].name": "request.controlnet.units[{}].model_name"``)."""

    __slots__ = ("prefix", "table")

    def __init__(self, table: Mapping[str, str] | None = None, *, prefix: str = "") -> None:
        self.table = dict(table or {})
        self.prefix = prefix

    def __call__(self, field: str) -> str:
        indexes = _INDEX.findall(field)
        wire = self.table.get(_INDEX.sub("[]", field) if indexes else field)
        if wire is None:
            return self.prefix + field
        return wire.format(*indexes) if indexes else wire

    def invalid(self, field: str, message: str, code: ErrorCode = ErrorCode.INVALID_REQUEST_BODY) -> ApiError:
        """A refusal of ``field`` (a capability-side name), named as this family names it."""
        return ApiError(code, message, param=self(field))


SAME_NAMES = WireNames()


async def resident_engine(scheduler: Scheduler, model: str, kind: type[E], names: WireNames = SAME_NAMES) -> E:
    """The engine, loaded, for checks that need it (tokenizer, context length) before the
    request queues; the wrong kind is refused from the catalog without loading anything."""
    try:
        return await scheduler.resident_engine(model, kind)
    except EngineError as exc:
        raise engine_api_error(exc, names) from None


def catalog_engine(scheduler: Scheduler, model: str, kind: type[E], names: WireNames = SAME_NAMES) -> E:
    """The engine's metadata (spec, options), checked for kind, neither loaded nor leased."""
    try:
        return scheduler.engine(model, kind)
    except EngineError as exc:
        raise engine_api_error(exc, names) from None


@asynccontextmanager
async def _mapped_errors(names: WireNames) -> AsyncIterator[None]:
    try:
        yield
    except EngineError as exc:
        raise engine_api_error(exc, names) from None


@asynccontextmanager
async def engine_call(
    scheduler: Scheduler,
    model: str,
    kind: type[E],
    operation: str,
    *,
    names: WireNames = SAME_NAMES,
    charge: Charge | None = None,
    priority: Priority = Priority.INTERACTIVE,
    owner: str | None = None,
    options: SamplingOptions | None = None,
    response_id: str | None = None,
    attributes: dict[str, Any] | None = None,
    input_tokens: int | None = None,
    weight: int = 1,
) -> AsyncIterator[tuple[E, Inference]]:
    """Hold ``model`` as a ``kind`` engine for the block, recorded and metered (see above).
    ``owner`` defaults to the caller's key (the auth guard sets it for the scheduler);
    ``weight`` is how many of the model's concurrent slots the work takes (its sequences)."""
    record = Inference(
        operation,
        model,
        options=options,
        response_id=response_id,
        input_tokens=input_tokens,
        attributes=attributes,
    )
    async with (
        charge if charge is not None else nullcontext(),
        record,
        _mapped_errors(names),
        scheduler.lease(model, kind, priority=priority, owner=owner, weight=weight) as engine,
    ):
        yield engine, record


@asynccontextmanager
async def engine_record(
    model: str,
    operation: str,
    *,
    names: WireNames = SAME_NAMES,
    attributes: dict[str, Any] | None = None,
) -> AsyncIterator[Inference]:
    """`engine_call` for work whose lease someone else holds: a job that joins a batch is
    recorded and its errors mapped here, while the batch leases the model for all its jobs."""
    async with Inference(operation, model, attributes=attributes) as record, _mapped_errors(names):
        yield record
