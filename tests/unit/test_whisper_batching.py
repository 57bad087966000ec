"""BatchQueue, the collector behind WhisperEngine's batches across requests, with a fake decoder."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from engines.batch_queue import BatchQueue

Job = tuple[str, str]  # (key, name)


class FakeDecoder:
    """Records each call's jobs; answers "<name>!" per job. While `hold` is clear, calls block
    (on their worker thread), so that jobs pile up behind the running one."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.started = threading.Event()
        self.fail_with: Exception | None = None
        self.fail_job: str | None = None

    def __call__(self, jobs: list[Job]) -> list[str | BaseException]:
        self.calls.append([name for _, name in jobs])
        self.started.set()
        if not self.hold.wait(60):
            raise TimeoutError("the test never released the decoder")
        if self.fail_with is not None:
            raise self.fail_with
        return [ValueError(name) if name == self.fail_job else f"{name}!" for _, name in jobs]


def make_queue(decoder: FakeDecoder, *, max_jobs: int = 8, wait_s: float = 0.0) -> BatchQueue[Job, str]:
    return BatchQueue(decoder, gate=asyncio.Lock(), key=lambda job: job[0], max_jobs=max_jobs, wait_s=wait_s)


async def until(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), 30)


async def busy(queue: BatchQueue[Job, str], decoder: FakeDecoder) -> asyncio.Task[str]:
    """A first job that holds the decoder until `decoder.hold` is set."""
    decoder.hold.clear()
    first = asyncio.ensure_future(queue.submit(("a", "first")))
    await until(lambda: queue.in_flight == 1)
    return first


async def test_a_lone_job_runs_at_once() -> None:
    decoder = FakeDecoder()
    queue = make_queue(decoder)
    assert await asyncio.wait_for(queue.submit(("a", "one")), 30) == "one!"
    assert decoder.calls == [["one"]]


async def test_jobs_that_wait_together_share_one_call() -> None:
    decoder = FakeDecoder()
    queue = make_queue(decoder)
    first = await busy(queue, decoder)
    later = [asyncio.ensure_future(queue.submit(("a", name))) for name in ("b", "c", "d")]
    await until(lambda: queue.waiting == 3)
    decoder.hold.set()
    assert await asyncio.wait_for(asyncio.gather(first, *later), 30) == ["first!", "b!", "c!", "d!"]
    assert decoder.calls == [["first"], ["b", "c", "d"]]


async def test_keys_do_not_mix_and_the_oldest_job_goes_first() -> None:
    decoder = FakeDecoder()
    queue = make_queue(decoder, max_jobs=2)
    first = await busy(queue, decoder)
    jobs = [("x", "x1"), ("y", "y1"), ("x", "x2"), ("x", "x3"), ("y", "y2")]
    later = [asyncio.ensure_future(queue.submit(job)) for job in jobs]
    await until(lambda: queue.waiting == len(jobs))
    decoder.hold.set()
    await asyncio.wait_for(asyncio.gather(first, *later), 30)
    # Up to two per call; x3 waits for the next turn behind the older y jobs.
    assert decoder.calls == [["first"], ["x1", "x2"], ["y1", "y2"], ["x3"]]


async def test_a_job_cancelled_while_waiting_leaves_its_batch() -> None:
    decoder = FakeDecoder()
    queue = make_queue(decoder)
    first = await busy(queue, decoder)
    later = [asyncio.ensure_future(queue.submit(("a", name))) for name in ("b", "c", "d")]
    await until(lambda: queue.waiting == 3)
    later[1].cancel()
    await until(lambda: queue.waiting == 2)
    decoder.hold.set()
    results = await asyncio.wait_for(asyncio.gather(first, *later, return_exceptions=True), 30)
    assert results[:2] == ["first!", "b!"] and results[3] == "d!"
    assert isinstance(results[2], asyncio.CancelledError)
    assert decoder.calls == [["first"], ["b", "d"]]


async def test_a_failed_call_fails_each_of_its_jobs_and_the_queue_goes_on() -> None:
    decoder = FakeDecoder()
    queue = make_queue(decoder)
    first = await busy(queue, decoder)
    later = [asyncio.ensure_future(queue.submit(("a", name))) for name in ("b", "c")]
    await until(lambda: queue.waiting == 2)
    decoder.fail_with = RuntimeError("device lost")
    decoder.hold.set()
    results = await asyncio.wait_for(asyncio.gather(first, *later, return_exceptions=True), 30)
    assert all(isinstance(result, RuntimeError) and str(result) == "device lost" for result in results)
    decoder.fail_with = None
    assert await asyncio.wait_for(queue.submit(("a", "after")), 30) == "after!"


async def test_an_error_for_one_job_fails_that_job_alone() -> None:
    decoder = FakeDecoder()
    decoder.fail_job = "bad"
    queue = make_queue(decoder)
    first = await busy(queue, decoder)
    later = [asyncio.ensure_future(queue.submit(("a", name))) for name in ("bad", "good")]
    await until(lambda: queue.waiting == 2)
    decoder.hold.set()
    results = await asyncio.wait_for(asyncio.gather(first, *later, return_exceptions=True), 30)
    assert results[0] == "first!" and results[2] == "good!"
    assert isinstance(results[1], ValueError)


async def test_fail_waiting_fails_the_waiting_jobs_and_lets_the_running_call_finish() -> None:
    decoder = FakeDecoder()
    queue = make_queue(decoder)
    first = await busy(queue, decoder)
    later = [asyncio.ensure_future(queue.submit(("a", name))) for name in ("b", "c")]
    await until(lambda: queue.waiting == 2)
    queue.fail_waiting(RuntimeError("unloaded"))
    decoder.hold.set()
    results = await asyncio.wait_for(asyncio.gather(first, *later, return_exceptions=True), 30)
    assert results[0] == "first!"
    assert all(isinstance(result, RuntimeError) for result in results[1:])
    assert decoder.calls == [["first"]]


async def test_a_wait_gathers_a_batch_and_ends_when_it_is_full() -> None:
    decoder = FakeDecoder()
    queue = make_queue(decoder, max_jobs=2, wait_s=60)  # the full batch starts, not the timeout
    first = asyncio.ensure_future(queue.submit(("a", "first")))
    await until(lambda: queue.waiting == 1)
    second = asyncio.ensure_future(queue.submit(("a", "second")))
    assert await asyncio.wait_for(asyncio.gather(first, second), 30) == ["first!", "second!"]
    assert decoder.calls == [["first", "second"]]


def test_nonsense_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        make_queue(FakeDecoder(), max_jobs=0)
    with pytest.raises(ValueError):
        make_queue(FakeDecoder(), wait_s=-1)
