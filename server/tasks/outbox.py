"""The durable webhook outbox: every finished task's webhook, delivered until it is sent.

A task's webhook is recorded in the task store by the same write that ends the task
(``TaskStore.finish`` / ``fail``), so neither a crash nor a restart can lose it. This
dispatcher sends what is due, one attempt at a time, and writes the next attempt's time
back: exponential backoff with jitter (so many receivers coming back at once are not hit
in lockstep), up to ``max_retries`` retries, as Novita documents. The body is rendered
from the task when it is sent, so its signed URLs are fresh.

Several replicas may dispatch from one store: taking a delivery leases it for ``lease_s``
(``TaskStore.due_webhooks``), far longer than one attempt may take, so no other dispatcher
sends it meanwhile; one whose dispatcher died is due again once the lease ends. Stopping
cancels the attempts in flight without waiting for them and hands their leases back: they
stay in the outbox, due at once for the next start (or another replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Callable

from server.keystore import StoreUnavailable
from server.tasks.models import Task, now_ms
from server.tasks.store import PendingWebhook, TaskStore
from server.tasks.webhooks import MAX_BACKOFF_S, WebhookSender

log = logging.getLogger("omniserve.tasks.webhooks")

# Deliveries in flight at once: a few slow receivers must not hold back everyone else's.
MAX_IN_FLIGHT = 16
# Longest sleep between looks at the outbox; new webhooks wake the dispatcher at once.
POLL_S = 1.0
# How long a delivery taken is kept from other dispatchers (settings: tasks.webhook_lease_s):
# well above one attempt's deadline (at most tasks.fetch_timeout_s) and the store calls around it.
DEFAULT_LEASE_S = 60.0
# Handing back the leases of attempts cut off by a stop waits no longer than this.
RELEASE_TIMEOUT_S = 2.0


def backoff_ms(attempts: int, base_s: float, cap_s: float) -> int:
    """The wait before the next try after ``attempts`` failed ones: doubling from ``base_s``,
    capped at ``cap_s``, and drawn from its upper half so retries spread out."""
    ceiling = min(base_s * 2 ** max(attempts - 1, 0), cap_s)
    return int(random.uniform(ceiling / 2, ceiling) * 1000)


class WebhookOutbox:
    def __init__(
        self,
        store: TaskStore,
        sender: WebhookSender | None,
        render: Callable[[Task], bytes],
        *,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = MAX_BACKOFF_S,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        self.store = store
        self.lease_s = lease_s
        self.sender = sender
        self.render = render
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._wake = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._taken: dict[str, PendingWebhook] = {}
        self._loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.sender is not None and self._loop_task is None:
            self._loop_task = asyncio.create_task(self._dispatch(), name="webhook-outbox")

    def wake(self) -> None:
        """A webhook was just recorded: look now rather than at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop at once: attempts in flight are cut off and stay in the outbox, due again."""
        tasks = [*self._in_flight.values(), *([self._loop_task] if self._loop_task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None
        # An attempt that recorded its outcome is no longer taken; the others give their lease
        # back so the next start need not wait it out. Best effort: the lease ends anyway.
        cut_off, self._taken = list(self._taken.values()), {}
        with contextlib.suppress(Exception):
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                for pending in cut_off:
                    await self.store.webhook_retry(pending.task_id, pending.attempts, now_ms())

    async def _dispatch(self) -> None:
        while True:
            try:
                await self._send_due()
                delay = await self._next_look_s()
            except StoreUnavailable:  # a shared store that is down: its breaker says when to look again
                log.warning("webhook outbox unreachable: the task store is unavailable")
                delay = POLL_S
            except Exception:  # a store error (disk full, locked): look again later
                log.exception("webhook outbox could not be read")
                delay = POLL_S
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _send_due(self) -> None:
        free = MAX_IN_FLIGHT - len(self._in_flight)
        if free <= 0:
            return
        # Only as many as there is room for: each one taken is leased, and must be sent.
        for pending in await self.store.due_webhooks(now_ms(), free, int(self.lease_s * 1000)):
            if pending.task_id in self._in_flight:  # still being sent past its lease: let it finish
                continue
            self._taken[pending.task_id] = pending
            delivery = asyncio.create_task(self._send(pending), name=f"webhook-{pending.task_id}")
            self._in_flight[pending.task_id] = delivery
            delivery.add_done_callback(functools.partial(self._done, pending.task_id))

    def _done(self, task_id: str, _: object = None) -> None:
        self._in_flight.pop(task_id, None)
        self._wake.set()

    async def _next_look_s(self) -> float:
        due = await self.store.next_webhook_due()
        if due is None:
            return POLL_S
        return min(max((due - now_ms()) / 1000, 0.0), POLL_S)

    async def _send(self, pending: PendingWebhook) -> None:
        await self._attempt(pending)
        self._taken.pop(pending.task_id, None)  # its outcome is written (unless cut off)

    async def _attempt(self, pending: PendingWebhook) -> None:
        assert self.sender is not None
        try:
            task = await self.store.get(pending.task_id)
            if task is None:  # deleted (retention) before it could be sent
                await self.store.webhook_done(pending.task_id)
                return
            attempt = pending.attempts + 1
            failure = await self.sender.attempt(
                pending.url, self.render(task), trace_context=task.trace_context, attempt=attempt
            )
            if failure is None:
                self.sender.delivered += 1
                await self.store.webhook_done(pending.task_id)
            elif attempt > self.max_retries:
                self.sender.failed += 1
                log.warning("webhook of task %s given up after %d attempts: %s", task.task_id, attempt, failure)
                await self.store.webhook_done(pending.task_id)
            else:
                retry_at = now_ms() + backoff_ms(attempt, self.backoff_s, self.max_backoff_s)
                await self.store.webhook_retry(pending.task_id, attempt, retry_at)
        except asyncio.CancelledError:
            raise
        except Exception:  # the store or the renderer failed: the row stays, tried again when due
            log.exception("webhook of task %s could not be processed", pending.task_id)
            attempt = pending.attempts + 1
            with contextlib.suppress(Exception):
                if attempt > self.max_retries:
                    await self.store.webhook_done(pending.task_id)
                else:
                    retry_at = now_ms() + backoff_ms(attempt, self.backoff_s, self.max_backoff_s)
                    await self.store.webhook_retry(pending.task_id, attempt, retry_at)
