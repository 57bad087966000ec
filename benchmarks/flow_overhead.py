"""FLUX overhead: one FLUX.1 [schnell]-layout txt2img through omniserve's /v3 API against the same
pipeline called directly, in the same run.

A random FLUX pipeline is built into a temp dir (by default larger than demo-flux, so that the
pipeline's own time dominates: 2 double and 4 single transformer blocks, 4 heads of 64), then
driven two ways, one job at a time (latency, not throughput):

  direct     diffusers' FluxPipeline loaded in this process and called with the same prompt, size,
             steps and seed, each image encoded to PNG with `encode_image` (the work the server does too);
  omniserve  `python -m server serve` with that model alone: POST /v3/async/txt2img, poll
             /v3/async/task-result every --poll-ms until TASK_STATUS_SUCCEED, download the image.

Each round times --jobs jobs per side, after --warmup uncounted ones; rounds alternate who goes
first. It prints each side's mean seconds per job, the ratio omniserve/direct and the overhead as a
share of the direct time. Goal: omniserve adds at most 5%.

    python benchmarks/flow_overhead.py [--size 512] [--steps 4] [--jobs 8] [--rounds 3] [--poll-ms 20]
                                       [--threads 1] [--batch-wait-ms 20]
                                       [--layers 2 --single-layers 4 --heads 4 --head-dim 64]

Polling costs up to one interval per job, and a background task waits up to tasks.batch_wait_ms
(20 ms) for companions to batch with: with a pipeline time of T the fixed cost weighs about
(poll/2 + 20 ms) / T, so the figure depends on the size and model scale chosen, which are printed.

Both sides run torch with --threads intra-op threads (default 1: the server's OMP_NUM_THREADS, and
torch.set_num_threads here). On a small shared machine two OpenMP threads per process stall at
every parallel region whenever another process takes a core (the polling client, the other side's
idle process, other work), which slowed the server side 3-10x in a first run; one thread each
compares the two paths, not the scheduling luck. Frequent polling costs more than its interval:
each task-result answer runs on the server's event-loop thread and takes the GIL from the
pipeline's worker thread, so the pipeline itself runs slower at --poll-ms 20 than at 100.
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
from v3_clients import IMAGE_TYPE, PNG_MAGIC, PROMPT, WARMUP_SEED, Server, toml_value, wait_ready  # noqa: E402

from server.capabilities.images.encoding import encode_image  # noqa: E402

MODEL = "bench-flux"
FAMILY = "flux-schnell"
GOAL_PERCENT = 5.0


class Direct:
    """The diffusers pipeline itself, in this process, on the engine's terms (CPU generator, PIL out)."""

    def __init__(self, path: Path, threads: int) -> None:
        import torch
        from diffusers import FluxPipeline

        torch.set_num_threads(threads)
        self.pipe = FluxPipeline.from_pretrained(str(path))
        self.pipe.set_progress_bar_config(disable=True)

    def one(self, size: int, steps: int, seed: int) -> None:
        import torch

        image = self.pipe(
            PROMPT,
            width=size,
            height=size,
            num_inference_steps=steps,
            max_sequence_length=256,  # what the engine asks of schnell
            generator=[torch.Generator("cpu").manual_seed(seed)],
            output_type="pil",
        ).images[0]
        if not encode_image(image, IMAGE_TYPE).startswith(PNG_MAGIC):
            raise RuntimeError("encode_image returned no PNG")

    async def measure(self, size: int, steps: int, jobs: int, warmup: int) -> list[float]:
        for seed in range(warmup):
            await asyncio.to_thread(self.one, size, steps, WARMUP_SEED + seed)
        times = []
        for seed in range(jobs):
            started = time.perf_counter()
            await asyncio.to_thread(self.one, size, steps, seed)
            times.append(time.perf_counter() - started)
        return times


async def one_task(session: aiohttp.ClientSession, url: str, size: int, steps: int, seed: int, poll_s: float) -> None:
    body = {
        "request": {"model_name": MODEL, "prompt": PROMPT, "width": size, "height": size, "steps": steps, "seed": seed},
        "extra": {"response_image_type": IMAGE_TYPE},
    }
    async with session.post(f"{url}/v3/async/txt2img", json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"txt2img answered {response.status}: {await response.text()}")
        task_id = msgspec.json.decode(await response.read())["task_id"]
    while True:
        async with session.get(f"{url}/v3/async/task-result", params={"task_id": task_id}) as response:
            result = msgspec.json.decode(await response.read())
        status = result["task"]["status"]
        if status == "TASK_STATUS_SUCCEED":
            break
        if status == "TASK_STATUS_FAILED":
            raise RuntimeError(f"task {task_id} failed: {result['task']['reason']}")
        await asyncio.sleep(poll_s)
    async with session.get(result["images"][0]["image_url"]) as response:
        if not (await response.read()).startswith(PNG_MAGIC):
            raise RuntimeError("downloaded image is no PNG")


async def measure_omniserve(
    server: Server, size: int, steps: int, jobs: int, warmup: int, poll_s: float
) -> list[float]:
    times = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        for seed in range(warmup):
            await one_task(session, server.url, size, steps, WARMUP_SEED + seed, poll_s)
        for seed in range(jobs):
            started = time.perf_counter()
            await one_task(session, server.url, size, steps, seed, poll_s)
            times.append(time.perf_counter() - started)
    return times


def omniserve_command(path: Path, work: Path, port: int, batch_wait_ms: float) -> list[str]:
    config = work / "bench.toml"
    config.write_text(
        f'host = "127.0.0.1"\nport = {port}\ndata_dir = {toml_value(str(work / "data"))}\nlog_level = "warning"\n\n'
        f"[tasks]\nbatch_wait_ms = {batch_wait_ms}\n\n"
        f'[[models]]\nname = "{MODEL}"\nkind = "image"\nengine = "diffusers"\npath = {toml_value(str(path))}\n'
        f"options = {toml_value({'family': FAMILY})}\n"
    )
    return [sys.executable, "-m", "server", "serve", "--config", str(config)]


async def bench(path: Path, server: Server, args: argparse.Namespace) -> tuple[list[float], list[float]]:
    await wait_ready(server)
    direct = Direct(path, args.threads)
    poll_s = args.poll_ms / 1000
    sides: dict[str, list[float]] = {"direct": [], "omniserve": []}
    for round_index in range(args.rounds):
        order = ["direct", "omniserve"] if round_index % 2 == 0 else ["omniserve", "direct"]
        for side in order:
            if side == "direct":
                times = await direct.measure(args.size, args.steps, args.jobs, args.warmup)
            else:
                times = await measure_omniserve(server, args.size, args.steps, args.jobs, args.warmup, poll_s)
            sides[side] += times
            print(
                f"  round {round_index + 1} {side:9s}: {statistics.mean(times) * 1000:.1f} ms/job "
                f"over {len(times)} jobs{load()}",
                flush=True,
            )
    return sides["direct"], sides["omniserve"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="square side, a multiple of 16 from 128")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=8, help="timed jobs per side and round")
    parser.add_argument("--warmup", type=int, default=2, help="uncounted jobs before each timed turn")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating who goes first")
    parser.add_argument("--poll-ms", type=float, default=20.0, help="task-result polling interval")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on each side")
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=20.0,
        help="the server's tasks.batch_wait_ms (its default 20; 0: no wait)",
    )
    parser.add_argument("--layers", type=int, default=2, help="double-stream transformer blocks")
    parser.add_argument("--single-layers", type=int, default=4, help="single-stream transformer blocks")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    args = parser.parse_args()
    if args.size < 128 or args.size % 16:
        parser.error("size: FLUX takes multiples of 16, and /v3 sides from 128")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the server process inherits it

    wall_started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="omniserve-flow-bench-"))
    from engines.image.flow_demo import build_flux

    path = work / MODEL
    build_flux(path, layers=args.layers, single_layers=args.single_layers, heads=args.heads, head_dim=args.head_dim)
    print(f"built {MODEL} under {path} in {time.monotonic() - wall_started:.1f} s", flush=True)
    port = free_port()
    server = Server(omniserve_command(path, work, port, args.batch_wait_ms), port, work / "omniserve.log")
    try:
        direct, omni = asyncio.run(bench(path, server, args))
    finally:
        server.stop()

    direct_s, omni_s = statistics.mean(direct), statistics.mean(omni)
    overhead = 100 * (omni_s - direct_s) / direct_s
    print(
        f"\n{args.size}x{args.size}, {args.steps} steps, transformer {args.layers}+{args.single_layers} blocks "
        f"x {args.heads} heads x {args.head_dim}, {args.threads} thread(s), poll {args.poll_ms:.0f} ms, "
        f"batch wait {args.batch_wait_ms:.0f} ms, "
        f"{args.rounds} rounds x {args.jobs} jobs\n"
    )
    print("| direct ms/job | omniserve ms/job | ratio omni/direct | overhead |\n|---|---|---|---|")
    print(f"| {direct_s * 1000:.1f} | {omni_s * 1000:.1f} | {omni_s / direct_s:.3f} | {overhead:+.1f}% |")
    verdict = "met" if overhead <= GOAL_PERCENT else "NOT met"
    print(f"\ngoal: overhead at most {GOAL_PERCENT:.0f}% of the direct time: {verdict}")
    print(f"total wall time: {time.monotonic() - wall_started:.1f} s")


if __name__ == "__main__":
    main()
