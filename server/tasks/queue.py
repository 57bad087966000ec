"""Where the runner takes its next task from: the ``TaskQueue`` protocol and the in-process
queue of a single server (``LocalTaskQueue``). Replicas sharing a Redis store use
``RedisTaskQueue`` (``server/tasks/queue_redis.py``).

The queue carries ids only; the task store stays the truth about each task. An item a
runner took is held until the runner says it ended (``done``) or gives it back unstarted
(``release``). The local queue holds nothing: the data dir lock makes its process the only
runner, and a restart reads every QUEUED task back from the store. A shared queue keeps
each item pending until ``done``, so an item whose runner died is taken over elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import msgspec

from server.tasks.fairqueue import FairQueue

if TYPE_CHECKING:
    from engines.scheduler import Scheduler
    from server.settings import Settings


class QueuedTask(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    owner: str | None
    model: str
    # Taken from a runner whose lease expired (its replica died): the task may have run.
    taken_over: bool = False
    # The queue's own handle on the item (a Redis stream entry id); empty for the local queue.
    ref: str = ""


class TaskQueue(Protocol):
    # True when other replicas share the queue: leases, not the startup recovery and the
    # sweep of PROCESSING tasks, decide what happened to a task whose runner went away.
    shared: bool
    # Called with the id of a held task whose item another runner took over (this one
    # stalled past its lease, or a cancel took it out): its run must stop.
    on_lost: Callable[[str], None] | None

    async def start(self) -> None:
        """Start the background loops (leases); before the first ``get``."""

    async def stop(self) -> None:
        """Stop the background loops and close connections; held items are left as they are."""

    async def check_room(self, owner: str | None) -> None:
        """429 QUEUE_FULL unless one more task of ``owner`` fits."""

    async def put(self, task_id: str, owner: str | None, model: str) -> None:
        """Queue an accepted task (never refused: the room was checked at submission)."""

    async def get(self) -> QueuedTask | None:
        """The next item, now held by this runner; None once the queue is closed."""

    async def discard(self, task_id: str, owner: str | None) -> None:
        """Take a cancelled task out, wherever it waits."""

    async def done(self, item: QueuedTask) -> None:
        """The task ended (or needs no run): the item leaves the queue."""

    async def release(self, item: QueuedTask) -> None:
        """Give an unstarted item back so another runner can take it at once."""

    def close(self) -> None:
        """Wake every waiting ``get`` with None (the server is draining)."""


class LocalTaskQueue:
    """Today's queue of one process: a FairQueue of ids (one FIFO per key, in turns), for
    every model. Nothing is held: a released task stays QUEUED in the store, and the next
    start queues it again."""

    shared = False

    def __init__(self, *, max_total: int, max_per_key: int) -> None:
        self.fair = FairQueue(max_total=max_total, max_per_key=max_per_key)
        self.on_lost: Callable[[str], None] | None = None  # never called: nothing is leased

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def check_room(self, owner: str | None) -> None:
        self.fair.check_room(owner)

    async def put(self, task_id: str, owner: str | None, model: str) -> None:
        self.fair.put(task_id, owner)

    async def get(self) -> QueuedTask | None:
        task_id = await self.fair.get()
        return None if task_id is None else QueuedTask(task_id=task_id, owner=None, model="")

    async def discard(self, task_id: str, owner: str | None) -> None:
        self.fair.discard(task_id, owner)

    async def done(self, item: QueuedTask) -> None:
        return None

    async def release(self, item: QueuedTask) -> None:
        return None

    def close(self) -> None:
        self.fair.close()


def open_task_queue(settings: Settings, scheduler: Scheduler) -> TaskQueue:
    """The queue settings name: this process's own with the SQLite store, else the Redis
    queue shared by the replicas on ``store_url``."""
    tasks = settings.tasks
    if not settings.store_url:
        return LocalTaskQueue(max_total=tasks.max_queued, max_per_key=tasks.max_queued_per_key)
    from server.keystore import replica_id
    from server.tasks.queue_redis import RedisTaskQueue  # redis-py only when it is used

    cluster = settings.cluster
    return RedisTaskQueue(
        settings.store_url,
        replica=replica_id(settings.data_path),
        # The queues this replica takes tasks from: the models it runs (cluster.serve).
        models=scheduler.served_models(),
        max_total=tasks.max_queued,
        max_per_key=tasks.max_queued_per_key,
        heartbeat_s=cluster.heartbeat_s,
        lease_s=cluster.lease_s,
        timeout_s=settings.store_timeout_s,
        retry_after_s=settings.store_retry_after_s,
    )
