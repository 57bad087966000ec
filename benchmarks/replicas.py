"""Replicas on one Redis store: /v3 txt2img throughput of two replicas against one, and the
latency of a task submission on Redis against SQLite.

Everything runs on this machine: a redis-server on loopback (the Debian package) and
`python -m server serve` processes with a catalog of demo-sd alone.

  submit latency   one replica on SQLite (store_url empty) and one on Redis, in turns: each
                   takes --submits sequential POST /v3/async/txt2img (128x128, 1 step) and the
                   benchmark times each answer (the task is recorded and queued, credits are
                   reserved), then waits for the tasks to finish before the other side goes.
  throughput       one replica on Redis, then two replicas on the same Redis both serving the
                   model: --jobs tasks from --concurrency clients that submit to the replicas in
                   turn and poll each task on the OTHER replica (any replica answers any task),
                   then download its image. Prints images/s and the ratio two/one.

Both replicas share this machine's cores, so two replicas cannot do more image work than one
here: the throughput ratio shows what the shared queue costs or gains (the second replica's
idle time is filled), not what a second machine would add. `--threads N` sets OMP_NUM_THREADS
for every server (default: unset, torch picks), printed with the figures.

    python benchmarks/replicas.py [--submits 200] [--jobs 32] [--concurrency 8] [--size 256] [--steps 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import free_port, load  # noqa: E402
from v3_clients import GUIDANCE, MODEL, PNG_MAGIC, PROMPT, SAMPLER, Server, toml_value, wait_ready  # noqa: E402

from engines.base import ModelSpec  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402


def settings_file(spec: ModelSpec, work: Path, name: str, port: int, store_url: str) -> Path:
    config = work / f"{name}.toml"
    config.write_text(
        f'host = "127.0.0.1"\nport = {port}\ndata_dir = {toml_value(str(work / name))}\nlog_level = "warning"\n'
        f"store_url = {toml_value(store_url)}\n\n"
        f"[[models]]\nname = {toml_value(spec.name)}\nkind = {toml_value(spec.kind.value)}\n"
        f"engine = {toml_value(spec.engine)}\npath = {toml_value(spec.path)}\noptions = {toml_value(spec.options)}\n"
    )
    return config


def start(spec: ModelSpec, work: Path, name: str, store_url: str) -> Server:
    port = free_port()
    config = settings_file(spec, work, name, port, store_url)
    return Server([sys.executable, "-m", "server", "serve", "--config", str(config)], port, work / f"{name}.log")


def body(size: int, steps: int, seed: int) -> dict[str, object]:
    return {
        "request": {
            "model_name": MODEL,
            "prompt": PROMPT,
            "width": size,
            "height": size,
            "steps": steps,
            "seed": seed,
            "guidance_scale": GUIDANCE,
            "sampler_name": SAMPLER,
            "image_num": 1,
        },
        "extra": {"response_image_type": "png"},
    }


async def submit(session: aiohttp.ClientSession, url: str, size: int, steps: int, seed: int) -> str:
    async with session.post(f"{url}/v3/async/txt2img", json=body(size, steps, seed)) as response:
        if response.status != 200:
            raise RuntimeError(f"txt2img answered {response.status}: {await response.text()}")
        return str(msgspec.json.decode(await response.read())["task_id"])


async def follow(session: aiohttp.ClientSession, url: str, task_id: str, poll_s: float) -> dict[str, object]:
    """Poll ``url`` until the task ends; its result."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        async with session.get(f"{url}/v3/async/task-result", params={"task_id": task_id}) as response:
            if response.status != 200:
                raise RuntimeError(f"task-result answered {response.status}: {await response.text()}")
            result: dict[str, object] = msgspec.json.decode(await response.read())
        status = result["task"]["status"]  # type: ignore[index]
        if status == "TASK_STATUS_SUCCEED":
            return result
        if status == "TASK_STATUS_FAILED":
            raise RuntimeError(f"task {task_id} failed: {result['task']['reason']}")  # type: ignore[index]
        await asyncio.sleep(poll_s)
    raise TimeoutError(f"task {task_id} did not end in 600 s")


async def submit_latency(url: str, submits: int) -> list[float]:
    """Milliseconds of each of ``submits`` sequential submissions; then waits for the tasks."""
    latencies: list[float] = []
    task_ids: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        for seed in range(5):  # warm-up: connections, the model's first load
            await follow(session, url, await submit(session, url, 128, 1, 10_000 + seed), 0.05)
        for seed in range(submits):
            started = time.perf_counter()
            task_ids.append(await submit(session, url, 128, 1, seed))
            latencies.append(1000 * (time.perf_counter() - started))
        for task_id in task_ids:
            await follow(session, url, task_id, 0.1)
    return latencies


async def throughput(urls: list[str], jobs: int, concurrency: int, size: int, steps: int, poll_s: float) -> float:
    """Images per second of ``jobs`` tasks submitted to the replicas in turn, each followed on
    the next replica in the list and downloaded from there."""
    seeds = iter(range(jobs))
    images = 0
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency * 4), timeout=aiohttp.ClientTimeout(total=600)
    ) as session:

        async def client() -> None:
            nonlocal images
            for seed in seeds:
                at = urls[seed % len(urls)]
                other = urls[(seed + 1) % len(urls)]
                task_id = await submit(session, at, size, steps, seed)
                result = await follow(session, other, task_id, poll_s)
                for image in result["images"]:  # type: ignore[attr-defined]
                    async with session.get(image["image_url"]) as response:
                        if response.status != 200 or not (await response.read()).startswith(PNG_MAGIC):
                            raise RuntimeError(f"image download answered {response.status}")
                    images += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(min(concurrency, jobs))))
        elapsed = time.perf_counter() - started
    if images != jobs:
        raise RuntimeError(f"{jobs} tasks gave {images} images")
    return images / elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def bench(spec: ModelSpec, work: Path, redis_url: str, args: argparse.Namespace) -> None:
    poll_s = args.poll_ms / 1000
    # Submit latency: SQLite and Redis, one replica each, in turns.
    rows: dict[str, list[float]] = {"sqlite": [], "redis": []}
    for store, url in (("sqlite", ""), ("redis", redis_url)):
        server = start(spec, work, f"latency-{store}", url)
        try:
            await wait_ready(server)
            rows[store] = await submit_latency(server.url, args.submits)
            print(f"  submit on {store}: p50 {statistics.median(rows[store]):.2f} ms{load()}", flush=True)
        finally:
            server.stop()
    # Throughput: one replica, then two, on the same Redis.
    one = start(spec, work, "replica-a", redis_url)
    try:
        await wait_ready(one)
        await throughput([one.url], args.warmup, args.concurrency, args.size, args.steps, poll_s)
        single = await throughput([one.url], args.jobs, args.concurrency, args.size, args.steps, poll_s)
        print(f"  one replica: {single:.2f} img/s{load()}", flush=True)
        two = start(spec, work, "replica-b", redis_url)
        try:
            await wait_ready(two)
            urls = [one.url, two.url]
            await throughput(urls, args.warmup, args.concurrency, args.size, args.steps, poll_s)
            double = await throughput(urls, args.jobs, args.concurrency, args.size, args.steps, poll_s)
            print(f"  two replicas: {double:.2f} img/s{load()}", flush=True)
        finally:
            two.stop()
    finally:
        one.stop()

    sqlite, redis_ms = rows["sqlite"], rows["redis"]
    print(f"\nthreads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} cores\n")
    print("| submit latency | p50 ms | p99 ms | mean ms |\n|---|---|---|---|")
    for name, values in (("SQLite", sqlite), ("Redis", redis_ms)):
        print(
            f"| {name} | {statistics.median(values):.2f} | {percentile(values, 0.99):.2f} "
            f"| {statistics.fmean(values):.2f} |"
        )
    print(
        f"\nratio Redis/SQLite submit latency: p50 {statistics.median(redis_ms) / statistics.median(sqlite):.2f}, "
        f"p99 {percentile(redis_ms, 0.99) / percentile(sqlite, 0.99):.2f}"
    )
    print(
        f"\n/v3 txt2img {args.size}x{args.size}, {args.steps} steps, {args.jobs} tasks, {args.concurrency} clients: "
        f"one replica {single:.2f} img/s, two replicas {double:.2f} img/s, ratio two/one {double / single:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--submits", type=int, default=200, help="sequential submissions timed per store")
    parser.add_argument("--jobs", type=int, default=32, help="tasks per throughput turn")
    parser.add_argument("--warmup", type=int, default=4, help="uncounted tasks before each throughput turn")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--poll-ms", type=float, default=100.0)
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every server")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="omniserve-replicas-bench-"))
    from engines.image.demo import build_image_demo_models

    spec = next(s for s in build_image_demo_models(work / "models") if s.name == MODEL)
    redis_server = RedisServer(work)
    redis_server.start()
    try:
        asyncio.run(bench(spec, work, redis_server.url, args))
    finally:
        redis_server.stop()
    print(f"\ntotal wall time: {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
