"""The ids of /v3 tasks waiting for a runner worker: one FIFO per owner key, served in turn.

One key's backlog must not starve the others: workers take the next task of each key with
waiting tasks in round-robin order, so a key that submits two tasks behind another key's
thousand waits for at most one task of that key per worker. The bounds (per key and in all)
are checked at submission, where a full queue is a 429 QUEUE_FULL; tasks queued again after
a restart were already accepted, so they are never refused.
"""

from __future__ import annotations

import asyncio
import collections

from schemas.errors import ApiError, ErrorCode

# What a full queue's 429 suggests: a task takes seconds to minutes, so a slot frees up soon.
QUEUE_FULL_RETRY_AFTER_S = 10.0

_OPEN = ""  # tasks of an open server (no keys) share one turn


class FairQueue:
    def __init__(self, *, max_total: int, max_per_key: int) -> None:
        self.max_total = max_total
        self.max_per_key = max_per_key
        # Keys in their serving order; each with its waiting task ids, oldest first.
        self._keys: collections.OrderedDict[str, collections.deque[str]] = collections.OrderedDict()
        self._size = 0
        self._ready = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return self._size

    def waiting(self, owner: str | None) -> int:
        return len(self._keys.get(owner or _OPEN, ()))

    def check_room(self, owner: str | None) -> None:
        """429 QUEUE_FULL unless one more task of ``owner`` fits."""
        if self._size >= self.max_total:
            message = f"The task queue is full ({self._size} tasks waiting); try again later."
        elif self.waiting(owner) >= self.max_per_key:
            message = f"This API key has {self.waiting(owner)} tasks waiting, the most allowed; try again later."
        else:
            return
        raise ApiError(ErrorCode.QUEUE_FULL, message, retry_after=QUEUE_FULL_RETRY_AFTER_S)

    def put(self, task_id: str, owner: str | None) -> None:
        key = owner or _OPEN
        waiting = self._keys.get(key)
        if waiting is None:
            waiting = self._keys[key] = collections.deque()
        waiting.append(task_id)
        self._size += 1
        self._ready.set()

    def discard(self, task_id: str, owner: str | None) -> bool:
        """Take a waiting task out (it was cancelled); False when it is not waiting."""
        key = owner or _OPEN
        waiting = self._keys.get(key)
        if waiting is None or task_id not in waiting:
            return False
        waiting.remove(task_id)
        self._size -= 1
        if not waiting:
            del self._keys[key]
        return True

    def get_nowait(self) -> str | None:
        """The next key's oldest task, that key then going to the back of the line."""
        if not self._keys:
            return None
        key, waiting = next(iter(self._keys.items()))
        task_id = waiting.popleft()
        self._size -= 1
        if waiting:
            self._keys.move_to_end(key)
        else:
            del self._keys[key]
        return task_id

    async def get(self) -> str | None:
        """The next task id; None once the queue is closed (the server is draining)."""
        while not self._closed:
            task_id = self.get_nowait()
            if task_id is not None:
                return task_id
            self._ready.clear()
            await self._ready.wait()
        return None

    def close(self) -> None:
        """Wake every waiting worker with None; the ids stay (QUEUED in the store too)."""
        self._closed = True
        self._ready.set()
