"""Scheduler benchmarks: image batching through /v3, and vLLM wake against a cold load.

(a) Image batching. The tiny demo SD pipeline (demo-sd, built into a temp dir), three ways:

  pipeline     `DiffusersImageEngine.generate` in this process, one request at a time (the anchor);
  batching off `python -m server serve` with tasks.batch_wait_ms = 0, N concurrent /v3 clients
               (default 8) each POSTing /v3/async/txt2img, learning the task is done from its
               webhook (`--notify poll`: polling task-result every --poll-ms), downloading the PNG;
  batching on  the same server with tasks.batch_wait_ms = 20 and tasks.max_batch_images = 8.

Every request is one 128x128 image with its own seed: 128 is the smallest side the /v3 API takes
(`schemas.limits.MIN_IMAGE_SIDE`), and the anchor runs the same jobs. It prints images/s per way and
the ratios to the one-at-a-time pipeline. Goal: batching on >= 2x the pipeline loop.

(b) vLLM wake against cold load, on the demo chat model: the time of a cold `load()`, then, where
the engine can sleep (`SleepableEngine.supports_sleep`), of `sleep()` and `wake()`. vLLM's sleep
mode needs a GPU platform; elsewhere wake prints "not supported on this platform".

    python benchmarks/scheduler.py [--jobs 48] [--rounds 3] [--steps 4] [--concurrency 8] [--notify webhook|poll]
                                   [--skip-llm]

Webhooks are the default: eight clients polling every 20 ms make 400 requests a second, and on
two cores answering them takes CPU time the pipeline would otherwise have (the profile of a
polled run showed the event loop busy 78% of the time); a client that wants throughput takes
the webhook the API offers.

The pipeline and both servers are started and warmed up before anything is timed; then each of
`--rounds` rounds (3) measures every way once, in a rotating order, and the table sums the rounds.
Only the way being measured works (an idle server costs next to nothing), and the load generator
runs in this process on the same machine. Each line prints the 1-minute load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import free_port, load  # noqa: E402
from v3_clients import (  # noqa: E402
    MODEL,
    WARMUP_SEED,
    Server,
    WebhookSink,
    job_for,
    run_clients,
    toml_value,
    wait_ready,
)

from engines.base import ModelSpec, SleepableEngine  # noqa: E402
from schemas.limits import MIN_IMAGE_SIDE as MIN_SIDE  # noqa: E402

GOAL_RATIO = 2.0


class Way(msgspec.Struct):
    name: str
    images: int
    seconds: float

    @property
    def ips(self) -> float:
        return self.images / self.seconds


def server_command(spec: ModelSpec, work: Path, port: int, batch_wait_ms: float, max_batch: int) -> list[str]:
    config = work / f"bench-{port}.toml"
    config.write_text(
        f'host = "127.0.0.1"\nport = {port}\ndata_dir = {toml_value(str(work / f"data-{port}"))}\n'
        'log_level = "warning"\n\n'
        f"[tasks]\nworkers = {max(8, max_batch)}\nbatch_wait_ms = {batch_wait_ms}\nmax_batch_images = {max_batch}\n"
        # Webhooks go to this benchmark's own receiver on loopback.
        "allow_private_urls = true\n\n"
        f"[[models]]\nname = {toml_value(spec.name)}\nkind = {toml_value(spec.kind.value)}\n"
        f"engine = {toml_value(spec.engine)}\npath = {toml_value(spec.path)}\noptions = {toml_value(spec.options)}\n"
    )
    return [sys.executable, "-m", "server", "serve", "--config", str(config)]


class Anchor:
    """The pipeline in this process, loaded once and warmed up."""

    def __init__(self, spec: ModelSpec, args: argparse.Namespace) -> None:
        from engines.image.pipelines import DiffusersImageEngine

        self.engine = DiffusersImageEngine(spec)
        self.args = args

    async def start(self) -> None:
        await self.engine.load()
        for seed in range(self.args.warmup):
            await self.engine.generate(job_for(self.args.size, self.args.steps, WARMUP_SEED + seed))

    async def measure(self) -> tuple[int, float]:
        started = time.perf_counter()
        images = 0
        for seed in range(self.args.jobs):
            images += len((await self.engine.generate(job_for(self.args.size, self.args.steps, seed))).images)
        return images, time.perf_counter() - started


class Served:
    """One omniserve process and its clients; warmed up once."""

    def __init__(self, spec: ModelSpec, work: Path, batch_wait_ms: float, args: argparse.Namespace) -> None:
        port = free_port()
        command = server_command(spec, work, port, batch_wait_ms, args.max_batch)
        self.server = Server(command, port, work / f"{port}.log")
        self.args = args
        self.sink = WebhookSink()

    async def start(self) -> None:
        await wait_ready(self.server)
        await self.sink.__aenter__()
        await self._clients(self.args.warmup, WARMUP_SEED)

    async def _clients(self, jobs: int, seed0: int) -> tuple[int, float]:
        notify = self.sink if self.args.notify == "webhook" else None
        args = self.args
        return await run_clients(
            self.server.url, args.size, args.steps, jobs, args.concurrency, args.poll_ms / 1000, seed0, notify
        )

    async def measure(self) -> tuple[int, float]:
        images, seconds = await self._clients(self.args.jobs, 0)
        if images != self.args.jobs:
            raise RuntimeError(f"{self.args.jobs} tasks gave {images} images")
        return images, seconds

    async def stop(self) -> None:
        await self.sink.__aexit__()
        self.server.stop()


async def image_batching(spec: ModelSpec, work: Path, args: argparse.Namespace) -> list[Way]:
    """Everything is started and warmed up first; then each round measures every way once, in an
    order that rotates, so slow spells of a shared machine fall on every way alike."""
    sides: dict[str, Anchor | Served] = {
        "pipeline, one at a time": Anchor(spec, args),
        f"/v3, batching off, {args.concurrency} clients": Served(spec, work, 0, args),
        f"/v3, batching on, {args.concurrency} clients": Served(spec, work, args.batch_wait_ms, args),
    }
    totals = {name: Way(name, 0, 0.0) for name in sides}
    try:
        for side in sides.values():
            await side.start()
        names = list(sides)
        for round_index in range(args.rounds):
            order = names[round_index % len(names) :] + names[: round_index % len(names)]
            for name in order:
                images, seconds = await sides[name].measure()
                totals[name].images += images
                totals[name].seconds += seconds
                print(f"  round {round_index + 1}, {name}: {images / seconds:.2f} img/s{load()}", flush=True)
    finally:
        for side in sides.values():
            if isinstance(side, Served):
                await side.stop()
            else:
                await side.engine.unload()
    return list(totals.values())


async def llm_wake(work: Path) -> tuple[float, str, str]:
    """Cold load seconds of demo-chat-tiny, and the sleep and wake times (or why there are none)."""
    from engines.demo import build_demo_models
    from engines.llm.generate import VllmTextEngine

    spec = next(s for s in build_demo_models(work / "llm-models") if s.name == "demo-chat-tiny")
    engine = VllmTextEngine(spec, cpu_threads=0)
    started = time.perf_counter()
    await engine.load()
    cold = time.perf_counter() - started
    try:
        if not isinstance(engine, SleepableEngine) or not engine.supports_sleep:
            return cold, "n/a", "not supported on this platform"
        started = time.perf_counter()
        await engine.sleep()
        slept = time.perf_counter() - started
        started = time.perf_counter()
        await engine.wake()
        woke = time.perf_counter() - started
        return cold, f"{slept:.2f} s", f"{woke:.2f} s ({cold / woke:.1f}x faster than cold)"
    finally:
        await engine.unload()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=MIN_SIDE, help=f"square side (the /v3 API takes {MIN_SIDE} up)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=48, help="timed requests per way and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each measures every way once")
    parser.add_argument("--warmup", type=int, default=8, help="uncounted requests before each timed run")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=20.0)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument(
        "--notify",
        choices=["webhook", "poll"],
        default="webhook",
        help="how clients learn a task is done: its webhook, or polling task-result every --poll-ms",
    )
    parser.add_argument("--poll-ms", type=float, default=20.0)
    parser.add_argument("--skip-llm", action="store_true", help="skip part (b)")
    args = parser.parse_args()
    if args.size < MIN_SIDE or args.size % 8:
        parser.error(f"the /v3 API takes multiples of 8 from {MIN_SIDE} up")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    wall = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="omniserve-scheduler-bench-"))
    from engines.image.demo import build_image_demo_models

    spec = next(s for s in build_image_demo_models(work / "models") if s.name == MODEL)
    print(
        f"(a) image batching, {MODEL} at {args.size}x{args.size}, {args.steps} steps, "
        f"{args.jobs} requests per way in each of {args.rounds} rounds, clients told by {args.notify}"
    )
    ways = asyncio.run(image_batching(spec, work, args))
    anchor = ways[0]
    print("\n| way | images | img/s | x pipeline one at a time |\n|---|---|---|---|")
    for way in ways:
        print(f"| {way.name} | {way.images} | {way.ips:.2f} | {way.ips / anchor.ips:.2f} |")
    ratio = ways[-1].ips / anchor.ips
    verdict = "met" if ratio >= GOAL_RATIO else "NOT met"
    print(f"\ngoal: batching on >= {GOAL_RATIO:g}x the one-at-a-time pipeline: {verdict} ({ratio:.2f}x)")

    if not args.skip_llm:
        print("\n(b) vLLM wake vs cold load, demo-chat-tiny")
        cold, slept, woke = asyncio.run(llm_wake(work))
        print(f"\n| cold load | sleep | wake |\n|---|---|---|\n| {cold:.2f} s | {slept} | {woke} |")
    print(f"\ntotal wall time: {time.monotonic() - wall:.1f} s")


if __name__ == "__main__":
    main()
