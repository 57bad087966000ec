"""Interactive chat latency while a large batch runs, against the same server idle.

Starts omniserve on the tiny demo chat model, and in each round measures streamed chat time
to first token (p50) with the server idle, then again while a 2,000-line batch on the same
model runs (its lines lease at background priority, ``batches.concurrent_lines`` at a time),
then cancels the batch. Prints both p50s side by side, their ratio (goal: at most 1.5x), and
how many batch lines completed during each busy phase (the batch did run).

    python benchmarks/batch_interactive.py [--lines 2000] [--requests 40] [--rounds 2]

The load generator runs on the same machine; other work on it shows as noise in both phases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine import free_port, load  # noqa: E402

MODEL = "demo-chat-tiny"  # the demo catalog's tiny random chat model (--model-path for another)
ENGINE_OPTIONS = {"dtype": "float32", "enforce_eager": True, "max_model_len": 512, "kv_cache_memory_bytes": 64 << 20}
PROMPT = [{"role": "user", "content": "Tell me a long story about the river and the old library."}]
ENDED = {"completed", "failed", "expired", "cancelled"}


def omniserve_command(model_path: str, data_dir: Path, port: int, concurrent_lines: int) -> list[str]:
    config = data_dir / "bench.toml"
    options = ", ".join(f"{key} = {msgspec.json.encode(value).decode()}" for key, value in ENGINE_OPTIONS.items())
    config.write_text(
        f'port = {port}\ndata_dir = "{data_dir}"\nlog_level = "warning"\n\n'
        f"[batches]\nconcurrent_lines = {concurrent_lines}\n\n"
        f'[[models]]\nname = "{MODEL}"\nkind = "chat"\npath = "{model_path}"\noptions = {{ {options} }}\n'
    )
    return [sys.executable, "-m", "server", "serve", "--config", str(config)]


async def wait_ready(session: aiohttp.ClientSession, url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            async with session.get(f"{url}/ready") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(1)
    raise TimeoutError("server not ready")


async def ttft(session: aiohttp.ClientSession, url: str, max_tokens: int) -> float:
    body = {"model": MODEL, "messages": PROMPT, "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    started = time.perf_counter()
    first = None
    async with session.post(f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for raw in response.content:
            line = raw.strip()
            if first is None and line.startswith(b"data: ") and line != b"data: [DONE]":
                choices = msgspec.json.decode(line[6:]).get("choices") or []
                if choices and choices[0].get("delta", {}).get("content"):
                    first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("no token streamed")
    return first


async def interactive_p50(session: aiohttp.ClientSession, url: str, requests: int, max_tokens: int) -> float:
    """One client at a time, as a person at a chat window: TTFT p50 in milliseconds."""
    times = [await ttft(session, url, max_tokens) for _ in range(requests)]
    return statistics.median(times) * 1000


async def start_batch(session: aiohttp.ClientSession, url: str, lines: int, line_tokens: int) -> str:
    rows = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": PROMPT, "max_tokens": line_tokens, "ignore_eos": True},
        }
        for i in range(lines)
    ]
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", "\n".join(json.dumps(row) for row in rows).encode(), filename="bench.jsonl")
    async with session.post(f"{url}/v1/files", data=form) as response:
        response.raise_for_status()
        file_id = (await response.json())["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    async with session.post(f"{url}/v1/batches", json=body) as response:
        response.raise_for_status()
        return str((await response.json())["id"])


async def batch_state(session: aiohttp.ClientSession, url: str, batch_id: str) -> tuple[str, int]:
    async with session.get(f"{url}/v1/batches/{batch_id}") as response:
        response.raise_for_status()
        batch = await response.json()
    return batch["status"], batch["request_counts"]["completed"]


async def bench(url: str, process: subprocess.Popen[bytes], args: argparse.Namespace) -> None:
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await wait_ready(session, url, process)
        await interactive_p50(session, url, 3, args.max_tokens)  # warm-up
        idle_runs, busy_runs = [], []
        for round_number in range(1, args.rounds + 1):
            idle = await interactive_p50(session, url, args.requests, args.max_tokens)
            batch_id = await start_batch(session, url, args.lines, args.line_tokens)
            # Measure only once lines are running.
            deadline = time.monotonic() + 120
            while (await batch_state(session, url, batch_id))[1] < 1:
                if time.monotonic() > deadline:
                    raise TimeoutError("the batch did not start")
                await asyncio.sleep(0.2)
            before = (await batch_state(session, url, batch_id))[1]
            busy = await interactive_p50(session, url, args.requests, args.max_tokens)
            status, after = await batch_state(session, url, batch_id)
            async with session.post(f"{url}/v1/batches/{batch_id}/cancel") as response:
                response.raise_for_status()
            deadline = time.monotonic() + 120
            while status not in ENDED and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                status, _ = await batch_state(session, url, batch_id)
            idle_runs.append(idle)
            busy_runs.append(busy)
            print(
                f"round {round_number}: TTFT p50 idle {idle:.1f} ms, with batch {busy:.1f} ms "
                f"({busy / idle:.2f}x); {after - before} batch lines completed meanwhile{load()}",
                flush=True,
            )
        idle_p50, busy_p50 = statistics.median(idle_runs), statistics.median(busy_runs)
        print()
        print(f"{'':24}{'idle':>10}{'batch running':>16}{'ratio':>8}")
        print(f"{'TTFT p50 (ms)':24}{idle_p50:>10.1f}{busy_p50:>16.1f}{busy_p50 / idle_p50:>7.2f}x   (goal <= 1.5x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=2000, help="lines in the batch")
    parser.add_argument("--line-tokens", type=int, default=32, help="tokens each batch line generates")
    parser.add_argument("--requests", type=int, default=40, help="interactive chats per phase")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens each interactive chat generates")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrent-lines", type=int, default=2, help="batches.concurrent_lines")
    parser.add_argument("--model-path", help="a chat model folder (default: build the demo chat model)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="omniserve-batch-bench-"))
    model_path = args.model_path
    if model_path is None:
        from engines.demo import build_demo_models

        model_path = next(spec.path for spec in build_demo_models(work / "models") if spec.name == MODEL)
    port = free_port()
    log = (work / "server.log").open("wb")
    process = subprocess.Popen(
        omniserve_command(model_path, work, port, args.concurrent_lines), cwd=ROOT, stdout=log, stderr=log
    )
    try:
        asyncio.run(bench(f"http://127.0.0.1:{port}", process, args))
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


if __name__ == "__main__":
    main()
