"""Who waits for a model's slot, and in which order: priorities, per-owner turns, the queue bounds."""

from __future__ import annotations

import asyncio
import enum
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


class AdmissionPolicy(msgspec.Struct, kw_only=True):
    max_concurrency: int = 256
    max_queue_depth: int = 512
    queue_timeout_s: float = 30.0
    # Unload models unused this long (pinned ones excepted); 0 keeps them until evicted.
    idle_ttl_s: float = 0.0


class FairGate:
    """A counting semaphore whose waiters are served by priority, and within a priority
    round-robin by owner, first come first served per owner."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.waiting = 0
        # Per priority, the owners with waiters in turn order (dict order), each with its queue.
        self._queues: dict[Priority, dict[str | None, deque[asyncio.Future[None]]]] = {p: {} for p in Priority}

    def locked(self) -> bool:
        return self.held >= self.limit or self.waiting > 0

    async def acquire(self, priority: Priority, owner: str | None, timeout: float) -> None:
        if not self.locked():
            self.held += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues[priority].setdefault(owner, deque()).append(waiter)
        self.waiting += 1
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted as the wait ended: hand the slot on
            else:
                self._withdraw(priority, owner, waiter)
            raise

    def release(self) -> None:
        self.held -= 1
        while self.held < self.limit and self.waiting > 0:
            waiter = self._next()
            if not waiter.done():
                self.held += 1
                waiter.set_result(None)

    def _next(self) -> asyncio.Future[None]:
        owners = next(queues for queues in self._queues.values() if queues)
        owner = next(iter(owners))
        queue = owners.pop(owner)
        waiter = queue.popleft()
        if queue:
            owners[owner] = queue  # back of the line of owners
        self.waiting -= 1
        return waiter

    def _withdraw(self, priority: Priority, owner: str | None, waiter: asyncio.Future[None]) -> None:
        owners = self._queues[priority]
        queue = owners.get(owner)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            self.waiting -= 1
            if not queue:
                del owners[owner]
