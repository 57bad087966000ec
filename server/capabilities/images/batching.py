"""Groups compatible image jobs that arrive close together into one engine call.

Each /v3 image task runs on its own runner worker; a worker with a batchable job hands it to
`ImageBatcher.generate` and awaits its own result. The first job of a key opens a batch and
starts its collector, which waits up to `wait_s` for more jobs of that key (or until the batch
holds `max_images` images), then takes the model (`hold`: the scheduler's lease) and runs them
all through one `run` call and hands each worker its job's result. The batch stays open while
it waits for the model, so jobs that arrive while the device is busy with the previous batch
join the next one instead of queuing one by one: under load batches fill up by themselves.
The workers are the ones that wait, so a batch holds at most as many tasks as the runner has
workers (settings `tasks.workers`).

A job whose worker gives up (shutdown) leaves the batch if the batch has not started; once all
of a batch's jobs are abandoned, the batch itself is cancelled. When a batch of several jobs
fails, each job is run again alone, so one bad job fails only its own task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from engines.base import ImageGeneration, ImageResult, ProgressCallback

log = logging.getLogger("omniserve.tasks.batching")

# Holds a model for a batch: yields what the runner needs (the leased engine).
ModelHolder = Callable[[str], AbstractAsyncContextManager[Any]]
# Runs jobs of one model and key as one call on what the holder yielded: one result per job, in order.
BatchRunner = Callable[[Any, list[ImageGeneration], ProgressCallback], Awaitable[list[ImageResult]]]


@asynccontextmanager
async def _model_name(model: str) -> AsyncIterator[str]:
    """The default holder: nothing to take, the runner gets the model's name."""
    yield model


class _Entry:
    def __init__(self, job: ImageGeneration, progress: ProgressCallback | None) -> None:
        self.job = job
        self.progress = progress
        self.future: asyncio.Future[ImageResult] = asyncio.get_running_loop().create_future()
        self.abandoned = False


class _Batch:
    def __init__(self, model: str, key: Hashable) -> None:
        self.model = model
        self.key = key
        self.entries: list[_Entry] = []
        self.images = 0
        self.full = asyncio.Event()
        self.started = False
        self.task: asyncio.Task[None] | None = None


class ImageBatcher:
    def __init__(self, run: BatchRunner, *, max_images: int, wait_s: float, hold: ModelHolder = _model_name) -> None:
        if max_images < 1 or wait_s < 0:
            raise ValueError("max_images must be at least 1 and wait_s not negative")
        self.run = run
        self.hold = hold
        self.max_images = max_images
        self.wait_s = wait_s
        self._open: dict[tuple[str, Hashable], _Batch] = {}
        self._running: set[asyncio.Task[None]] = set()
        self.batch_sizes: list[int] = []  # jobs per started batch, most recent last (bounded)

    async def generate(
        self, model: str, key: Hashable, job: ImageGeneration, progress: ProgressCallback | None = None
    ) -> ImageResult:
        """The result of `job`, run together with other jobs of the same model and key."""
        entry = _Entry(job, progress)
        batch = self._join(model, key, entry)
        try:
            # Shielded: one waiter giving up must not cancel the call the others wait for.
            return await asyncio.shield(entry.future)
        except asyncio.CancelledError:
            self._abandon(batch, entry)
            raise

    def _join(self, model: str, key: Hashable, entry: _Entry) -> _Batch:
        batch = self._open.get((model, key))
        if batch is not None and batch.images + entry.job.image_num > self.max_images:
            self._close(batch)  # full: it runs now, and this job opens the next one
            batch = None
        if batch is None:
            batch = _Batch(model, key)
            self._open[(model, key)] = batch
            batch.task = asyncio.create_task(self._collect(batch), name=f"image-batch-{model}")
            self._running.add(batch.task)
            batch.task.add_done_callback(self._running.discard)
        batch.entries.append(entry)
        batch.images += entry.job.image_num
        if batch.images >= self.max_images:
            self._close(batch)
        return batch

    def _close(self, batch: _Batch) -> None:
        if self._open.get((batch.model, batch.key)) is batch:
            del self._open[(batch.model, batch.key)]
        batch.full.set()

    def _abandon(self, batch: _Batch, entry: _Entry) -> None:
        entry.abandoned = True
        if not batch.started and entry in batch.entries:
            batch.entries.remove(entry)
            batch.images -= entry.job.image_num
        if batch.task is not None and all(other.abandoned for other in batch.entries):
            self._close(batch)
            batch.task.cancel()

    async def _collect(self, batch: _Batch) -> None:
        with contextlib.suppress(TimeoutError):  # the window ended before the batch filled
            await asyncio.wait_for(batch.full.wait(), self.wait_s)
        try:
            # Still open while waiting for the model: later jobs of this key join until it is full.
            async with self.hold(batch.model) as held:
                self._close(batch)
                batch.started = True
                entries = list(batch.entries)
                if not entries:
                    return
                self.batch_sizes = [*self.batch_sizes[-99:], len(entries)]
                await self._run(held, entries)
        except asyncio.CancelledError:
            self._close(batch)
            for entry in batch.entries:
                if not entry.future.done():
                    entry.future.cancel()
            raise
        except Exception as error:  # no model (e.g. a 503 from the scheduler): every job fails with it
            self._close(batch)
            batch.started = True
            for entry in batch.entries:
                _settle(entry, error)

    async def _run(self, held: Any, entries: list[_Entry]) -> None:
        try:
            results = await self.run(held, [entry.job for entry in entries], _fan_out(entries))
        except Exception as error:
            if len(entries) == 1:
                _settle(entries[0], error)
                return
            log.warning("a batch of %d image jobs failed (%s); running them one by one", len(entries), error)
            for entry in entries:
                if entry.abandoned:
                    continue
                try:
                    alone = await self.run(held, [entry.job], _fan_out([entry]))
                except Exception as own:
                    _settle(entry, own)
                else:
                    _settle(entry, alone[0])
            return
        for entry, result in zip(entries, results, strict=True):
            _settle(entry, result)


def _fan_out(entries: list[_Entry]) -> ProgressCallback:
    callbacks = [entry.progress for entry in entries if entry.progress is not None]

    def progress(fraction: float) -> None:
        for callback in callbacks:
            callback(fraction)

    return progress


def _settle(entry: _Entry, outcome: ImageResult | Exception) -> None:
    if entry.future.done():
        return
    if entry.abandoned:  # nobody awaits it: cancelled, so no "exception never retrieved"
        entry.future.cancel()
    elif isinstance(outcome, Exception):
        entry.future.set_exception(outcome)
    else:
        entry.future.set_result(outcome)
