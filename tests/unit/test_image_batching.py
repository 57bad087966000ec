"""Image batching: the batcher on its own with a recording runner, then /v3 tasks through the app
with a fake engine that can batch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from engines.base import BatchImageEngine, ImageGeneration, ImageResult, ModelSpec, ProgressCallback
from schemas.errors import ApiError, ErrorCode
from server.app import build_components, create_app
from server.capabilities.images.batching import ImageBatcher
from server.settings import Settings
from tests.fakes import FAKE_SPECS, FakeImageEngine, fake_factory
from tests.unit.test_image_tasks import REQUEST, poll


def job(seed: int, **fields: Any) -> ImageGeneration:
    defaults: dict[str, Any] = {"prompt": f"prompt {seed}", "width": 64, "height": 64, "steps": 2}
    return ImageGeneration(**{**defaults, "guidance_scale": 7.0, "seed": seed, **fields})


class Recorder:
    """A batch runner that records each call's jobs and returns one result per job, by seed."""

    def __init__(self, delay: float = 0.0, fail_when: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.delay = delay
        self.fail_when = fail_when  # seed whose presence fails the call

    async def __call__(self, model: str, jobs: list[ImageGeneration], progress: ProgressCallback) -> list[ImageResult]:
        self.calls.append([one.seed for one in jobs])
        await asyncio.sleep(self.delay)
        if self.fail_when is not None and any(one.seed == self.fail_when for one in jobs):
            raise ValueError(f"seed {self.fail_when} fails")
        progress(1.0)
        return [
            ImageResult(images=[f"{one.prompt}/{one.seed + i}" for i in range(one.image_num)], seed=one.seed)
            for one in jobs
        ]


async def gather(batcher: ImageBatcher, items: list[tuple[Hashable, ImageGeneration]]) -> list[ImageResult]:
    return await asyncio.gather(*(batcher.generate("m", key, one) for key, one in items))


async def test_compatible_jobs_share_one_call_and_keep_their_own_results() -> None:
    runner = Recorder()
    batcher = ImageBatcher(runner, max_images=8, wait_s=0.05)
    results = await gather(batcher, [("k", job(seed)) for seed in (5, 6, 7)])
    assert runner.calls == [[5, 6, 7]]
    assert [result.seed for result in results] == [5, 6, 7]
    assert [result.images for result in results] == [["prompt 5/5"], ["prompt 6/6"], ["prompt 7/7"]]
    assert batcher.batch_sizes == [3]


class BusyDevice:
    """A model holder whose device is busy until `free` is set; counts the holds taken."""

    def __init__(self) -> None:
        self.free = asyncio.Event()
        self.holds = 0

    @asynccontextmanager
    async def __call__(self, model: str) -> AsyncIterator[str]:
        await self.free.wait()
        self.holds += 1
        yield model


async def test_jobs_arriving_while_the_device_is_busy_join_the_waiting_batch() -> None:
    runner, device = Recorder(), BusyDevice()
    batcher = ImageBatcher(runner, hold=device, max_images=8, wait_s=0.01)
    first = asyncio.create_task(batcher.generate("m", "k", job(1)))
    await asyncio.sleep(0.1)  # the window is over: the batch waits for the device, still open
    later = [asyncio.create_task(batcher.generate("m", "k", job(seed))) for seed in (2, 3)]
    await asyncio.sleep(0.05)
    assert runner.calls == []
    device.free.set()
    results = await asyncio.wait_for(asyncio.gather(first, *later), 5)
    assert runner.calls == [[1, 2, 3]] and device.holds == 1
    assert [result.seed for result in results] == [1, 2, 3]


async def test_a_full_batch_waiting_for_the_device_sends_newcomers_to_the_next() -> None:
    runner, device = Recorder(), BusyDevice()
    batcher = ImageBatcher(runner, hold=device, max_images=2, wait_s=0.01)
    tasks = [asyncio.create_task(batcher.generate("m", "k", job(seed))) for seed in (1, 2, 3)]
    await asyncio.sleep(0.05)
    device.free.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert sorted(runner.calls) == [[1, 2], [3]] and device.holds == 2


async def test_a_holder_that_fails_fails_every_job_of_its_batch() -> None:
    @asynccontextmanager
    async def no_room(model: str) -> AsyncIterator[str]:
        raise ApiError(ErrorCode.SERVICE_NOT_AVAILABLE, "no room", retry_after=1.0)
        yield model  # unreachable: the holder fails before yielding

    runner = Recorder()
    batcher = ImageBatcher(runner, hold=no_room, max_images=8, wait_s=0.01)
    results = await asyncio.gather(*(batcher.generate("m", "k", job(seed)) for seed in (1, 2)), return_exceptions=True)
    assert [type(result) for result in results] == [ApiError, ApiError] and runner.calls == []


async def test_incompatible_jobs_and_models_run_apart() -> None:
    runner = Recorder()
    batcher = ImageBatcher(runner, max_images=8, wait_s=0.05)
    results = await asyncio.gather(
        batcher.generate("m", "a", job(1)),
        batcher.generate("m", "b", job(2)),
        batcher.generate("m", "a", job(3)),
        batcher.generate("other", "a", job(4)),
    )
    assert sorted(runner.calls) == [[1, 3], [2], [4]]
    assert [result.seed for result in results] == [1, 2, 3, 4]


async def test_batches_never_exceed_max_images() -> None:
    runner = Recorder()
    batcher = ImageBatcher(runner, max_images=3, wait_s=0.05)
    jobs = [job(1), job(2, image_num=2), job(3), job(4, image_num=3), job(5)]
    results = await gather(batcher, [("k", one) for one in jobs])
    # Images in order: 1+2 fill a batch of 3; 3 cannot join 4 (1+3 > 3); 4 fills one alone.
    assert runner.calls == [[1, 2], [3], [4], [5]]
    assert [len(result.images) for result in results] == [1, 2, 1, 3, 1]
    assert results[3].images == ["prompt 4/4", "prompt 4/5", "prompt 4/6"]


async def test_a_full_batch_starts_without_waiting_out_the_window() -> None:
    runner = Recorder()
    batcher = ImageBatcher(runner, max_images=2, wait_s=5.0)
    started = time.monotonic()
    await gather(batcher, [("k", job(1)), ("k", job(2))])
    assert time.monotonic() - started < 1.0
    assert runner.calls == [[1, 2]]


async def test_the_wait_is_bounded_and_late_jobs_open_the_next_batch() -> None:
    runner = Recorder()
    batcher = ImageBatcher(runner, max_images=8, wait_s=0.05)
    started = time.monotonic()
    first = asyncio.create_task(batcher.generate("m", "k", job(1)))
    finished: list[float] = []
    first.add_done_callback(lambda _: finished.append(time.monotonic() - started))
    await asyncio.sleep(0.3)  # well past the window: the first batch has run alone
    assert first.done() and runner.calls == [[1]]
    assert 0.04 <= finished[0] < 0.25  # it waited for the window, and not much longer
    await gather(batcher, [("k", job(2)), ("k", job(3))])
    assert runner.calls == [[1], [2, 3]]


async def test_a_failing_batch_reruns_its_jobs_one_by_one() -> None:
    runner = Recorder(fail_when=2)
    batcher = ImageBatcher(runner, max_images=8, wait_s=0.05)
    outcomes = await asyncio.gather(
        *(batcher.generate("m", "k", job(seed)) for seed in (1, 2, 3)), return_exceptions=True
    )
    assert runner.calls == [[1, 2, 3], [1], [2], [3]]
    assert isinstance(outcomes[1], ValueError)
    assert [outcome.seed for outcome in outcomes if isinstance(outcome, ImageResult)] == [1, 3]


async def test_a_cancelled_waiter_leaves_a_batch_that_has_not_started() -> None:
    runner = Recorder()
    batcher = ImageBatcher(runner, max_images=8, wait_s=0.1)
    leaving = asyncio.create_task(batcher.generate("m", "k", job(1)))
    staying = asyncio.create_task(batcher.generate("m", "k", job(2)))
    await asyncio.sleep(0.01)
    leaving.cancel()
    assert (await staying).seed == 2
    assert runner.calls == [[2]]
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_a_batch_whose_waiters_all_leave_is_cancelled() -> None:
    runner = Recorder(delay=5.0)
    batcher = ImageBatcher(runner, max_images=1, wait_s=0.0)
    waiter = asyncio.create_task(batcher.generate("m", "k", job(1)))
    await asyncio.sleep(0.05)
    assert runner.calls == [[1]]  # running
    waiter.cancel()
    await asyncio.sleep(0.05)
    assert not batcher._running


# ---------------------------------------------------------------- through the app


class BatchingFakeImageEngine(FakeImageEngine):
    """The fake image engine with the batch capability; records the seeds of each call."""

    def __init__(self, spec: ModelSpec, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self.calls: list[list[int]] = []

    def batch_key(self, job: ImageGeneration) -> Hashable | None:
        if job.hires_fix is not None or job.init_image is not None:
            return None
        return (job.width, job.height, job.steps, job.guidance_scale, job.sampler)

    async def generate(self, job: ImageGeneration, progress: ProgressCallback | None = None) -> ImageResult:
        self.calls.append([job.seed])
        return await super().generate(job, progress)

    async def generate_batch(
        self, jobs: list[ImageGeneration], progress: ProgressCallback | None = None
    ) -> list[ImageResult]:
        self.calls.append([one.seed for one in jobs])
        return [await FakeImageEngine.generate(self, one, progress) for one in jobs]


def batching_factory(spec: ModelSpec) -> Any:
    if spec.name == "fake-sd":
        return BatchingFakeImageEngine(spec)
    return fake_factory(spec)


async def run_tasks(tmp_path: Path, bodies: list[dict[str, Any]], **tasks: object) -> tuple[list[dict[str, Any]], Any]:
    config = msgspec.convert({"data_dir": str(tmp_path), "tasks": tasks}, Settings)
    state = build_components(config, FAKE_SPECS, {"fake": batching_factory})
    engine = state.scheduler.engine("fake-sd")
    assert isinstance(engine, BatchImageEngine)
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        submitted = await asyncio.gather(*(client.post("/v3/async/txt2img", json=body) for body in bodies))
        assert all(response.status_code == 200 for response in submitted)
        results = [await poll(client, response.json()["task_id"]) for response in submitted]
    return results, engine


async def test_tasks_are_batched_and_each_gets_its_own_seed_and_images(tmp_path: Path) -> None:
    bodies = [{"request": {**REQUEST, "seed": seed, "image_num": 1 + seed % 2}} for seed in range(10, 16)]
    bodies.append({"request": {**REQUEST, "seed": 99, "width": 256}})  # another size: not in their batch
    results, engine = await run_tasks(tmp_path, bodies, batch_wait_ms=100, max_batch_images=8, workers=8)
    for body, result in zip(bodies, results, strict=True):
        assert result["task"]["status"] == "TASK_STATUS_SUCCEED"
        assert result["extra"]["seed"] == str(body["request"]["seed"])
        assert len(result["images"]) == body["request"].get("image_num", 1)
    assert sorted(seed for call in engine.calls for seed in call) == [10, 11, 12, 13, 14, 15, 99]
    assert [99] in engine.calls
    batched = [call for call in engine.calls if 99 not in call]
    assert max(len(call) for call in batched) > 1  # several tasks shared a call
    images = {seed: 1 + seed % 2 for seed in range(10, 16)}
    assert all(sum(images[seed] for seed in call) <= 8 for call in batched)


async def test_batching_off_runs_every_task_alone(tmp_path: Path) -> None:
    bodies = [{"request": {**REQUEST, "seed": seed}} for seed in (1, 2, 3)]
    results, engine = await run_tasks(tmp_path, bodies, batch_wait_ms=0)
    assert all(result["task"]["status"] == "TASK_STATUS_SUCCEED" for result in results)
    assert sorted(engine.calls) == [[1], [2], [3]]
