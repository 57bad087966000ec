"""The durable webhook outbox: every finished task's webhook, delivered until it is sent.

A task's webhook is recorded in the task store by the same transaction that ends the task
(``SqliteTaskStore.finish`` / ``fail``), so neither a crash nor a restart can lose it. This
dispatcher sends what is due, one attempt at a time, and writes the next attempt's time
back: exponential backoff with jitter (so many receivers coming back at once are not hit
in lockstep), up to ``max_retries`` retries, as Novita documents. The body is rendered
from the task when it is sent, so its signed URLs are fresh. Stopping cancels the
attempts in flight without waiting: they stay in the outbox for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Callable

from server.tasks.models import Task, now_ms
from server.tasks.store import PendingWebhook, SqliteTaskStore
from server.tasks.webhooks import MAX_BACKOFF_S, WebhookSender

log = logging.getLogger("omniserve.tasks.webhooks")

# Deliveries in flight at once: a few slow receivers must not hold back everyone else's.
MAX_IN_FLIGHT = 16
# Longest sleep between looks at the outbox; new webhooks wake the dispatcher at once.
POLL_S = 1.0


def backoff_ms(attempts: int, base_s: float, cap_s: float) -> int:
    """The wait before the next try after ``attempts`` failed ones: doubling from ``base_s``,
    capped at ``cap_s``, and drawn from its upper half so retries spread out."""
    ceiling = min(base_s * 2 ** max(attempts - 1, 0), cap_s)
    return int(random.uniform(ceiling / 2, ceiling) * 1000)


class WebhookOutbox:
    def __init__(
        self,
        store: SqliteTaskStore,
        sender: WebhookSender | None,
        render: Callable[[Task], bytes],
        *,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = MAX_BACKOFF_S,
    ) -> None:
        self.store = store
        self.sender = sender
        self.render = render
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._wake = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.sender is not None and self._loop_task is None:
            self._loop_task = asyncio.create_task(self._dispatch(), name="webhook-outbox")

    def wake(self) -> None:
        """A webhook was just recorded: look now rather than at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop at once: attempts in flight are cut off and stay in the outbox."""
        tasks = [*self._in_flight.values(), *([self._loop_task] if self._loop_task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None

    async def _dispatch(self) -> None:
        while True:
            try:
                self._send_due()
                delay = self._next_look_s()
            except Exception:  # a store error (disk full, locked): look again later
                log.exception("webhook outbox could not be read")
                delay = POLL_S
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _send_due(self) -> None:
        free = MAX_IN_FLIGHT - len(self._in_flight)
        if free <= 0:
            return
        for pending in self.store.due_webhooks(now_ms(), free + len(self._in_flight)):
            if pending.task_id in self._in_flight or len(self._in_flight) >= MAX_IN_FLIGHT:
                continue
            delivery = asyncio.create_task(self._send(pending), name=f"webhook-{pending.task_id}")
            self._in_flight[pending.task_id] = delivery
            delivery.add_done_callback(functools.partial(self._done, pending.task_id))

    def _done(self, task_id: str, _: object = None) -> None:
        self._in_flight.pop(task_id, None)
        self._wake.set()

    def _next_look_s(self) -> float:
        due = self.store.next_webhook_due()
        if due is None:
            return POLL_S
        return min(max((due - now_ms()) / 1000, 0.0), POLL_S)

    async def _send(self, pending: PendingWebhook) -> None:
        assert self.sender is not None
        try:
            task = await self.store.get(pending.task_id)
            if task is None:  # deleted (retention) before it could be sent
                self.store.webhook_done(pending.task_id)
                return
            attempt = pending.attempts + 1
            failure = await self.sender.attempt(
                pending.url, self.render(task), trace_context=task.trace_context, attempt=attempt
            )
            if failure is None:
                self.sender.delivered += 1
                self.store.webhook_done(pending.task_id)
            elif attempt > self.max_retries:
                self.sender.failed += 1
                log.warning("webhook of task %s given up after %d attempts: %s", task.task_id, attempt, failure)
                self.store.webhook_done(pending.task_id)
            else:
                retry_at = now_ms() + backoff_ms(attempt, self.backoff_s, self.max_backoff_s)
                self.store.webhook_retry(pending.task_id, attempt, retry_at)
        except asyncio.CancelledError:
            raise
        except Exception:  # the store or the renderer failed: the row stays, tried again when due
            log.exception("webhook of task %s could not be processed", pending.task_id)
            attempt = pending.attempts + 1
            with contextlib.suppress(Exception):
                if attempt > self.max_retries:
                    self.store.webhook_done(pending.task_id)
                else:
                    retry_at = now_ms() + backoff_ms(attempt, self.backoff_s, self.max_backoff_s)
                    self.store.webhook_retry(pending.task_id, attempt, retry_at)
