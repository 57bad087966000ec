"""BatchQueue: jobs that wait for a busy model together run together, without a timer.

Jobs of a model queue anyway while it computes, so the jobs that gather during one call make the
next batch: the wait turns into shared work. A job that finds the model free runs at once, alone
(`wait_s` may trade a little latency for fuller batches). Used by WhisperEngine for short
transcriptions (engines/audio/whisper_batching.py has the batched decode itself).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from engines.workpools import WorkPool, run_in

J = TypeVar("J")
R = TypeVar("R")


class _Entry(Generic[J, R]):
    def __init__(self, job: J, future: asyncio.Future[R]) -> None:
        self.job = job
        self.future = future


class BatchQueue(Generic[J, R]):
    """Jobs wait here while the model is busy. Each time `gate` frees, the oldest waiting job and
    the waiting jobs with its key (up to `max_jobs`, oldest first) go to one `run` call, on a
    worker thread; `run` gives one outcome per job, in order: a result, or an exception for that
    job alone. An exception from `run` itself fails every job of the call."""

    def __init__(
        self,
        run: Callable[[list[J]], list[R | BaseException]],
        *,
        gate: asyncio.Lock,
        key: Callable[[J], Hashable],
        max_jobs: int,
        wait_s: float = 0.0,
    ) -> None:
        if max_jobs < 1 or wait_s < 0:
            raise ValueError("max_jobs must be at least 1 and wait_s not negative")
        self._run = run
        self._gate = gate
        self._key = key
        self.max_jobs = max_jobs
        self.wait_s = wait_s
        self._waiting: list[_Entry[J, R]] = []
        self._in_flight: list[_Entry[J, R]] = []
        self._arrived = asyncio.Event()
        self._drainer: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def submit(self, job: J) -> R:
        entry: _Entry[J, R] = _Entry(job, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        self._arrived.set()
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain(), name="whisper-batches")
        try:
            return await entry.future
        except asyncio.CancelledError:
            # Not yet taken: it leaves the queue. Taken: the call runs for the others anyway.
            if entry in self._waiting:
                self._waiting.remove(entry)
            raise

    def fail_waiting(self, error: BaseException) -> None:
        """Fail every job not yet taken (the model is going away); a running call finishes."""
        waiting, self._waiting = self._waiting, []
        for entry in waiting:
            _settle(entry.future, error)

    async def _drain(self) -> None:
        try:
            while self._waiting:
                async with self._gate:
                    await self._wait_for_company()
                    batch = self._take()
                    if batch:
                        await self._run_batch(batch)
        except BaseException:
            # Stopped from outside (the loop is closing): nobody is left to run these.
            stopped = RuntimeError("transcription batching stopped")
            for entry in self._in_flight:
                _settle(entry.future, stopped)
            self.fail_waiting(stopped)
            raise
        finally:
            self._in_flight = []
            self._drainer = None

    async def _wait_for_company(self) -> None:
        if self.wait_s <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while self._waiting and len(self._compatible()) < self.max_jobs:
            left = deadline - loop.time()
            if left <= 0:
                return
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)

    def _compatible(self) -> list[_Entry[J, R]]:
        """The oldest waiting job and the others with its key, oldest first, up to max_jobs."""
        if not self._waiting:
            return []
        key = self._key(self._waiting[0].job)
        return [entry for entry in self._waiting if self._key(entry.job) == key][: self.max_jobs]

    def _take(self) -> list[_Entry[J, R]]:
        batch = self._compatible()
        self._waiting = [entry for entry in self._waiting if entry not in batch]
        return batch

    async def _run_batch(self, batch: list[_Entry[J, R]]) -> None:
        self._in_flight = batch
        try:
            outcomes = await run_in(WorkPool.ENGINE, self._run, [entry.job for entry in batch])
        except Exception as error:
            outcomes = [error] * len(batch)
        if len(outcomes) != len(batch):
            outcomes = [RuntimeError(f"a batch of {len(batch)} jobs gave {len(outcomes)} results")] * len(batch)
        for entry, outcome in zip(batch, outcomes, strict=True):
            _settle(entry.future, outcome)
        self._in_flight = []


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():  # its caller went away
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
