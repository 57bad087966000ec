"""Scheduler benchmarks: image batching through /v3, and vLLM wake against a cold load.

(a) Image batching. The tiny demo SD pipeline (demo-sd, built into a temp dir), three ways:

  pipeline     `DiffusersImageEngine.generate` in this process, one request at a time (the anchor);
  batching off `python -m server serve` with tasks.batch_wait_ms = 0, N concurrent /v3 clients
               (default 8) each POSTing /v3/async/txt2img, polling task-result, downloading the PNG;
  batching on  the same server with tasks.batch_wait_ms = 20 and tasks.max_batch_images = 8.

Every request is one 128x128 image with its own seed: 128 is the smallest side the /v3 API takes
(`server.tasks.images.MIN_SIDE`), and the anchor runs the same jobs. It prints images/s per way and
the ratios to the one-at-a-time pipeline. Goal: batching on >= 2x the pipeline loop.

(b) vLLM wake against cold load, on the demo chat model: the time of a cold `load()`, then, where
the engine can sleep (`SleepableEngine.supports_sleep`), of `sleep()` and `wake()`. vLLM's sleep
mode needs a GPU platform; elsewhere wake prints "not supported on this platform".

    python benchmarks/scheduler.py [--jobs 48] [--steps 4] [--concurrency 8] [--skip-llm]

Servers start one at a time; nothing else runs while a way is measured, and the load generator
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

from image_throughput import (  # noqa: E402
    MODEL,
    WARMUP_SEED,
    Server,
    free_port,
    job_for,
    load,
    run_clients,
    toml_value,
    wait_ready,
)

from engines.base import ModelSpec, SleepableEngine  # noqa: E402
from server.tasks.images import MIN_SIDE  # noqa: E402

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
        f"[tasks]\nworkers = {max(8, max_batch)}\nbatch_wait_ms = {batch_wait_ms}\nmax_batch_images = {max_batch}\n\n"
        f"[[models]]\nname = {toml_value(spec.name)}\nkind = {toml_value(spec.kind.value)}\n"
        f"engine = {toml_value(spec.engine)}\npath = {toml_value(spec.path)}\noptions = {toml_value(spec.options)}\n"
    )
    return [sys.executable, "-m", "server", "serve", "--config", str(config)]


async def pipeline_loop(spec: ModelSpec, size: int, steps: int, jobs: int, warmup: int) -> Way:
    from engines.image.pipelines import DiffusersImageEngine

    engine = DiffusersImageEngine(spec)
    await engine.load()
    try:
        for seed in range(warmup):
            await engine.generate(job_for(size, steps, WARMUP_SEED + seed))
        started = time.perf_counter()
        images = 0
        for seed in range(jobs):
            images += len((await engine.generate(job_for(size, steps, seed))).images)
        way = Way("pipeline, one at a time", images, time.perf_counter() - started)
    finally:
        await engine.unload()
    print(f"  {way.name}: {way.images} images in {way.seconds:.2f} s = {way.ips:.2f} img/s{load()}", flush=True)
    return way


async def through_server(spec: ModelSpec, work: Path, name: str, batch_wait_ms: float, args: argparse.Namespace) -> Way:
    port = free_port()
    server = Server(server_command(spec, work, port, batch_wait_ms, args.max_batch), port, work / f"{port}.log")
    try:
        await wait_ready(server)
        poll_s = args.poll_ms / 1000
        await run_clients(server.url, args.size, args.steps, args.warmup, args.concurrency, poll_s, WARMUP_SEED)
        images, seconds = await run_clients(server.url, args.size, args.steps, args.jobs, args.concurrency, poll_s, 0)
    finally:
        server.stop()
    if images != args.jobs:
        raise RuntimeError(f"{args.jobs} tasks gave {images} images")
    way = Way(name, images, seconds)
    print(f"  {way.name}: {way.images} images in {way.seconds:.2f} s = {way.ips:.2f} img/s{load()}", flush=True)
    return way


async def image_batching(spec: ModelSpec, work: Path, args: argparse.Namespace) -> list[Way]:
    anchor = await pipeline_loop(spec, args.size, args.steps, args.jobs, args.warmup)
    off = await through_server(spec, work, f"/v3, batching off, {args.concurrency} clients", 0, args)
    on = await through_server(spec, work, f"/v3, batching on, {args.concurrency} clients", args.batch_wait_ms, args)
    return [anchor, off, on]


async def llm_wake(work: Path) -> tuple[float, str, str]:
    """Cold load seconds of demo-chat, and the sleep and wake times (or why there are none)."""
    from engines.demo import build_demo_models
    from engines.llm.generate import VllmTextEngine

    spec = next(s for s in build_demo_models(work / "llm-models") if s.name == "demo-chat")
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
    parser.add_argument("--jobs", type=int, default=48, help="timed requests per way")
    parser.add_argument("--warmup", type=int, default=8, help="uncounted requests before each timed run")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=20.0)
    parser.add_argument("--max-batch", type=int, default=8)
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
    print(f"(a) image batching, {MODEL} at {args.size}x{args.size}, {args.steps} steps, {args.jobs} requests")
    ways = asyncio.run(image_batching(spec, work, args))
    anchor = ways[0]
    print("\n| way | images | img/s | x pipeline one at a time |\n|---|---|---|---|")
    for way in ways:
        print(f"| {way.name} | {way.images} | {way.ips:.2f} | {way.ips / anchor.ips:.2f} |")
    ratio = ways[-1].ips / anchor.ips
    verdict = "met" if ratio >= GOAL_RATIO else "NOT met"
    print(f"\ngoal: batching on >= {GOAL_RATIO:g}x the one-at-a-time pipeline: {verdict} ({ratio:.2f}x)")

    if not args.skip_llm:
        print("\n(b) vLLM wake vs cold load, demo-chat")
        cold, slept, woke = asyncio.run(llm_wake(work))
        print(f"\n| cold load | sleep | wake |\n|---|---|---|\n| {cold:.2f} s | {slept} | {woke} |")
    print(f"\ntotal wall time: {time.monotonic() - wall:.1f} s")


if __name__ == "__main__":
    main()
