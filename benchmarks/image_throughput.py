"""Image throughput: the diffusers engine called directly against the same engine behind omniserve's /v3 API.

The same tiny pipeline (demo-sd, built into a temp dir) is driven two ways, one after the other:

  direct     `DiffusersImageEngine` loaded in this process, `generate` in a loop, one job at a time,
             each image encoded to PNG with `server.capabilities.images.encoding.encode_image` (the work the server
             does too);
  omniserve  `python -m server serve` with a catalog of demo-sd alone, and N concurrent clients
             (default 8), each POSTing /v3/async/txt2img, polling /v3/async/task-result every 20 ms
             until TASK_STATUS_SUCCEED, then downloading the image URL: the whole client path.
             With `--notify webhook` each task names a webhook on a receiver in this process
             instead, and the client waits for it (no polling load on the server).

Both sides run identical jobs (same prompt, sampler, guidance, steps and seeds). For each size it
prints images/s direct and via omniserve, the ratio omniserve/direct, and the time omniserve adds
per task, in ms ((1/ips_omni - 1/ips_direct) * 1000) and as a share of the direct per-image time.

Goal: omniserve adds under 5% to the direct loop's per-image time at 512x512.

    python benchmarks/image_throughput.py [--sizes 128,512] [--steps 4] [--jobs N] [--rounds 1] [--concurrency 8]
                                          [--notify poll|webhook]

The small size is 128x128, not 64x64: the /v3 API refuses sides below 128
(`schemas.limits.MIN_IMAGE_SIDE`), and the comparison needs the same job on both sides. Images per
size default to 48 below 512x512 and 16 from 512x512 up (`--jobs` sets one count for every size),
per round (`--rounds`, default 1); warm-up jobs run before each timed turn and are not counted.

The server is started and the in-process engine loaded before anything is timed; then, size by
size, the direct loop and the server's clients take turns (more rounds alternate who goes first).
The two are never under load at the same time (the idle one costs next to nothing), and the load
generator runs in this process on the same machine. Each measurement prints the 1-minute load
average: other work on the machine skews both.
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
    GUIDANCE,
    IMAGE_TYPE,
    MODEL,
    PNG_MAGIC,
    SAMPLER,
    WARMUP_SEED,
    Server,
    WebhookSink,
    job_for,
    run_clients,
    toml_value,
    wait_ready,
)

from engines.base import ModelSpec  # noqa: E402
from schemas.limits import MIN_IMAGE_SIDE as MIN_SIDE  # noqa: E402
from server.capabilities.images.encoding import encode_image  # noqa: E402

GOAL_PERCENT = 5.0
GOAL_SIZE = 512


class Result(msgspec.Struct):
    size: int
    images: int
    direct_ips: float
    omni_ips: float

    @property
    def ratio(self) -> float:
        return self.omni_ips / self.direct_ips

    @property
    def direct_ms(self) -> float:
        return 1000 / self.direct_ips

    @property
    def overhead_ms(self) -> float:
        return (1 / self.omni_ips - 1 / self.direct_ips) * 1000

    @property
    def overhead_percent(self) -> float:
        return 100 * self.overhead_ms / self.direct_ms


def default_jobs(size: int) -> int:
    return 16 if size >= 512 else 48


# ---------------------------------------------------------------- direct


class Direct:
    """The engine in this process, one job at a time, each image encoded as the server does."""

    def __init__(self, spec: ModelSpec, steps: int) -> None:
        from engines.image.pipelines import DiffusersImageEngine

        self.engine = DiffusersImageEngine(spec)
        self.steps = steps

    async def one(self, size: int, seed: int) -> int:
        result = await self.engine.generate(job_for(size, self.steps, seed))
        for image in result.images:
            if not encode_image(image, IMAGE_TYPE).startswith(PNG_MAGIC):
                raise RuntimeError("encode_image returned no PNG")
        return len(result.images)

    async def measure(self, size: int, jobs: int, warmup: int) -> tuple[int, float]:
        for seed in range(warmup):
            await self.one(size, WARMUP_SEED + seed)
        started = time.perf_counter()
        images = 0
        for seed in range(jobs):
            images += await self.one(size, seed)
        elapsed = time.perf_counter() - started
        print(
            f"  direct    {size}x{size}: {images} images in {elapsed:.2f} s = {images / elapsed:.2f} img/s{load()}",
            flush=True,
        )
        return images, elapsed


# ---------------------------------------------------------------- omniserve


def omniserve_command(spec: ModelSpec, work: Path, port: int) -> list[str]:
    config = work / "bench.toml"
    config.write_text(
        f'host = "127.0.0.1"\nport = {port}\ndata_dir = {toml_value(str(work / "data"))}\nlog_level = "warning"\n\n'
        # Webhooks go to this benchmark's own receiver on loopback.
        "[tasks]\nallow_private_urls = true\n\n"
        f"[[models]]\nname = {toml_value(spec.name)}\nkind = {toml_value(spec.kind.value)}\n"
        f"engine = {toml_value(spec.engine)}\npath = {toml_value(spec.path)}\noptions = {toml_value(spec.options)}\n"
    )
    return [sys.executable, "-m", "server", "serve", "--config", str(config)]


async def measure_omniserve(
    server: Server,
    size: int,
    steps: int,
    jobs: int,
    warmup: int,
    concurrency: int,
    poll_s: float,
    sink: WebhookSink | None = None,
) -> tuple[int, float]:
    if warmup:
        await run_clients(server.url, size, steps, warmup, concurrency, poll_s, WARMUP_SEED, sink)
    images, elapsed = await run_clients(server.url, size, steps, jobs, concurrency, poll_s, 0, sink)
    if images != jobs:
        raise RuntimeError(f"{jobs} tasks gave {images} images")
    print(
        f"  omniserve {size}x{size}: {images} images in {elapsed:.2f} s = {images / elapsed:.2f} img/s{load()}",
        flush=True,
    )
    return images, elapsed


async def bench(spec: ModelSpec, server: Server, plan: list[tuple[int, int]], args: argparse.Namespace) -> list[Result]:
    """Both sides are set up first; then, size by size, the direct loop and the server's clients take
    turns (who goes first alternates between rounds), so the numbers compared are taken close together.
    The idle side costs next to nothing while the other is measured."""
    started = time.monotonic()
    await wait_ready(server)
    print(f"omniserve: ready in {time.monotonic() - started:.1f} s", flush=True)
    direct = Direct(spec, args.steps)
    started = time.monotonic()
    await direct.engine.load()
    print(f"direct: loaded in {time.monotonic() - started:.1f} s", flush=True)
    poll_s = args.poll_ms / 1000
    results = []
    sink = WebhookSink()
    await sink.__aenter__()
    notify = sink if args.notify == "webhook" else None
    try:
        for size, jobs in plan:
            totals = {"direct": [0, 0.0], "omniserve": [0, 0.0]}  # images, seconds over all rounds
            for round_index in range(args.rounds):
                order = ["direct", "omniserve"] if round_index % 2 == 0 else ["omniserve", "direct"]
                for side in order:
                    # Warm-up before each turn: the other side ran in between.
                    if side == "direct":
                        images, elapsed = await direct.measure(size, jobs, args.warmup)
                    else:
                        images, elapsed = await measure_omniserve(
                            server, size, args.steps, jobs, args.warmup, args.concurrency, poll_s, notify
                        )
                    totals[side][0] += images
                    totals[side][1] += elapsed
            direct_images, direct_s = totals["direct"]
            omni_images, omni_s = totals["omniserve"]
            results.append(
                Result(
                    size=size,
                    images=jobs * args.rounds,
                    direct_ips=direct_images / direct_s,
                    omni_ips=omni_images / omni_s,
                )
            )
    finally:
        await sink.__aexit__()
        await direct.engine.unload()
    return results


# ---------------------------------------------------------------- report


def print_table(results: list[Result]) -> None:
    print(
        "| size | images | direct img/s | omniserve img/s | ratio omni/direct | direct ms/img "
        "| overhead ms/task | overhead % of direct |\n|---|---|---|---|---|---|---|---|"
    )
    for r in results:
        print(
            f"| {r.size}x{r.size} | {r.images} | {r.direct_ips:.2f} | {r.omni_ips:.2f} | {r.ratio:.3f} "
            f"| {r.direct_ms:.1f} | {r.overhead_ms:+.1f} | {r.overhead_percent:+.1f}% |"
        )
    goal = next((r for r in results if r.size == GOAL_SIZE), None)
    if goal is not None:
        verdict = "met" if goal.overhead_percent < GOAL_PERCENT else "NOT met"
        print(
            f"\ngoal: overhead under {GOAL_PERCENT:.0f}% of the direct per-image time at {GOAL_SIZE}x{GOAL_SIZE}: "
            f"{verdict} ({goal.overhead_percent:+.1f}%)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="128,512", help="square sides, comma-separated (at least 128)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--jobs", type=int, help="images per size (default: 48 below 512x512, 16 from 512x512)")
    parser.add_argument("--warmup", type=int, default=4, help="uncounted jobs before each timed turn")
    parser.add_argument(
        "--rounds", type=int, default=1, help="turns per side and size, alternating who goes first (summed)"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent /v3 clients")
    parser.add_argument(
        "--notify",
        choices=["webhook", "poll"],
        default="poll",
        help="how clients learn a task is done: polling task-result every --poll-ms (the default), or its webhook",
    )
    parser.add_argument("--poll-ms", type=float, default=20.0, help="task-result polling interval")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    for size in sizes:
        if size < MIN_SIDE or size % 8:
            parser.error(f"size {size}: the /v3 API takes multiples of 8 from {MIN_SIDE} up")
    plan = [(size, args.jobs or default_jobs(size)) for size in sizes]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    wall_started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="omniserve-image-bench-"))
    from engines.image.demo import build_image_demo_models

    spec = next(s for s in build_image_demo_models(work / "models") if s.name == MODEL)
    print(f"built {MODEL} under {work / 'models'} in {time.monotonic() - wall_started:.1f} s", flush=True)

    port = free_port()
    server = Server(omniserve_command(spec, work, port), port, work / "omniserve.log")
    try:
        results = asyncio.run(bench(spec, server, plan, args))
    finally:
        server.stop()

    told = "webhooks" if args.notify == "webhook" else f"poll {args.poll_ms:.0f} ms"
    print(
        f"\nsteps {args.steps}, sampler {SAMPLER}, guidance {GUIDANCE}, {args.concurrency} clients, "
        f"{told}, warm-up {args.warmup} jobs per turn, {args.rounds} round(s)\n"
    )
    print_table(results)
    print(f"\ntotal wall time: {time.monotonic() - wall_started:.1f} s")


if __name__ == "__main__":
    main()
