"""Who waits for a model's slot, and in which order: priorities, per-owner turns, the queue bounds."""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from contextvars import ContextVar

import msgspec


class Priority(enum.IntEnum):
    """Who waits first for a model's slot: a lower value is served before a higher one."""

    INTERACTIVE = 0  # a caller waits on the HTTP response
    BACKGROUND = 1  # /v3 task work


# The owner (API key id) of the leases taken in this context, when `lease` is given none:
# the server sets it per request once the key is known.
lease_owner: ContextVar[str | None] = ContextVar("omniserve_lease_owner", default=None)
# The most urgent priority the leases taken in this context may have: work that nobody waits
# on (batch lines) runs the interactive services in a context set to BACKGROUND, so their
# leases queue behind interactive requests without each service passing a priority.
lease_priority_floor: ContextVar[Priority] = ContextVar("omniserve_lease_priority_floor", default=Priority.INTERACTIVE)


class AdmissionPolicy(msgspec.Struct, kw_only=True):
    max_concurrency: int = 256
    max_queue_depth: int = 512
    # How long an interactive request waits for a slot, a turn or a load before a 503.
    queue_timeout_s: float = 30.0
    # The same for background task work: nobody holds a connection open for it, and a task
    # that gave up would be failed for good, so it waits much longer.
    background_timeout_s: float = 1800.0
    # A background waiter older than this is served as if interactive, so a steady stream of
    # interactive requests cannot starve queued tasks; 0 turns aging off.
    background_aging_s: float = 60.0
    # Unload models unused this long (pinned ones excepted); 0 keeps them until evicted.
    idle_ttl_s: float = 0.0

    def timeout_for(self, priority: Priority) -> float:
        return self.background_timeout_s if priority is Priority.BACKGROUND else self.queue_timeout_s


class _Waiter:
    __slots__ = ("future", "since", "weight")

    def __init__(self, future: asyncio.Future[None], weight: int) -> None:
        self.future = future
        self.since = time.monotonic()
        self.weight = weight


class FairGate:
    """A counting semaphore whose waiters are served by priority, and within a priority
    round-robin by owner, first come first served per owner. A background waiter that has
    waited `aging_s` goes ahead of interactive ones (oldest such waiter first).

    A holder may take several units (its ``weight``: a request's sequences on an engine
    that batches them). The next waiter in order waits until its weight fits, and those
    behind it wait too, so a heavy request is not overtaken forever by light ones. A weight
    above the limit takes the whole gate (the work runs alone)."""

    def __init__(self, limit: int, *, aging_s: float = 0.0) -> None:
        self.limit = limit
        self.aging_s = aging_s
        self.held = 0
        self.waiting = 0
        # Per priority, the owners with waiters in turn order (dict order), each with its queue.
        self._queues: dict[Priority, dict[str | None, deque[_Waiter]]] = {p: {} for p in Priority}

    def _units(self, weight: int) -> int:
        return max(1, min(weight, self.limit))

    def locked(self, weight: int = 1) -> bool:
        return self.held + self._units(weight) > self.limit or self.waiting > 0

    async def acquire(self, priority: Priority, owner: str | None, timeout: float, weight: int = 1) -> None:
        units = self._units(weight)
        if not self.locked(units):
            self.held += units
            return
        waiter = _Waiter(asyncio.get_running_loop().create_future(), units)
        self._queues[priority].setdefault(owner, deque()).append(waiter)
        self.waiting += 1
        try:
            async with asyncio.timeout(timeout):
                await waiter.future
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(units)  # granted as the wait ended: hand the units on
            else:
                self._withdraw(priority, owner, waiter)
            raise

    def release(self, weight: int = 1) -> None:
        """Give back what an ``acquire`` of the same ``weight`` took."""
        self.held -= self._units(weight)
        self._grant()

    def _grant(self) -> None:
        """Serve waiters in order while the next one's weight fits."""
        while self.waiting > 0:
            owners, owner = self._next_owner()
            waiter = owners[owner][0]
            if waiter.future.done():  # cancelled, not yet withdrawn: skip it
                self._pop(owners, owner)
                continue
            if self.held + waiter.weight > self.limit:
                return
            self._pop(owners, owner)
            self.held += waiter.weight
            waiter.future.set_result(None)

    def _next_owner(self) -> tuple[dict[str | None, deque[_Waiter]], str | None]:
        """The owner whose first waiter is served next, and the queues it is in."""
        aged = self._aged_owners()
        if aged:
            return self._queues[Priority.BACKGROUND], aged[0]
        owners = next(queues for queues in self._queues.values() if queues)
        return owners, next(iter(owners))

    def _pop(self, owners: dict[str | None, deque[_Waiter]], owner: str | None) -> _Waiter:
        queue = owners.pop(owner)
        waiter = queue.popleft()
        if queue:
            owners[owner] = queue  # back of the line of owners
        self.waiting -= 1
        return waiter

    def _aged_owners(self) -> list[str | None]:
        """[the background owner whose first waiter is the oldest], when that waiter has
        waited `aging_s`; [] otherwise (a list, since None is a valid owner)."""
        background = self._queues[Priority.BACKGROUND]
        if self.aging_s <= 0 or not background:
            return []
        owner, queue = min(background.items(), key=lambda item: item[1][0].since)
        return [owner] if time.monotonic() - queue[0].since >= self.aging_s else []

    def _withdraw(self, priority: Priority, owner: str | None, waiter: _Waiter) -> None:
        owners = self._queues[priority]
        queue = owners.get(owner)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            self.waiting -= 1
            if not queue:
                del owners[owner]
            # A heavy waiter at the head may have held back lighter ones that fit.
            self._grant()
