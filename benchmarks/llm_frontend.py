"""omniserve's OpenAI front end against vLLM's own OpenAI server, same model, same engine.

Starts both servers on the tiny demo chat model with identical engine settings, drives
them in turns with the same streaming-chat load at each concurrency, and prints
requests/s, time to first token (p50/p99) and inter-token latency (p50), with the
omniserve/vLLM ratio for each (for latencies, vLLM/omniserve, so above 1 is better).

A p99 from one short run is mostly noise, so each level runs --rounds turns per server and
the table shows the spread of p99 across rounds (min..max) next to its mean. For omniserve it
also shows the worst event-loop delay during the level (omniserve_event_loop_lag_max_seconds,
read from /metrics before and after each turn; that gauge resets on every scrape) and how
many probe wake-ups came 100 ms or more late. Answers other than 200 are counted: 429/503
(refused, busy) with and without Retry-After, and anything else as errors. A refused client
waits the Retry-After it was given (at most 1 s) before its next request, so a refusing
server is not hammered in a tight loop.

omniserve runs with explicit admission bounds (--max-running streams at once per model,
--max-queue-depth waiting): at c=256 the streams past both must be answered 429 with
Retry-After at once rather than queue inside the engine, where TTFT p99 grows with the burst.
Latencies are those of the accepted (200) streams; the last lines check that every 429 carried
Retry-After. --omniserve-only skips vLLM's server (a second vLLM engine on the machine).

    python benchmarks/llm_frontend.py [--duration 10] [--rounds 3] [--concurrency 1,16,64,256]
        [--max-running 64] [--max-queue-depth 64] [--omniserve-only]

Only one server is under load at a time; the load generator runs in this process on the
same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import msgspec
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine import free_port  # noqa: E402

MODEL = "demo-chat-tiny"
ENGINE_OPTIONS = {"dtype": "float32", "enforce_eager": True, "max_model_len": 512, "kv_cache_memory_bytes": 64 << 20}
PROMPT = [{"role": "user", "content": "Tell me a long story about the river and the old library."}]


# Longest a refused client waits before its next request, whatever Retry-After says.
MAX_REFUSED_WAIT_S = 1.0
LAG_MAX = "omniserve_event_loop_lag_max_seconds"
LAG_COUNT = "omniserve_event_loop_lag_seconds_count"
LAG_UNDER_100MS = "omniserve_event_loop_lag_seconds_bucket"


class Result(msgspec.Struct):
    concurrency: int
    requests_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    completed: int
    errors: int
    refused_with_retry_after: int = 0
    refused_without_retry_after: int = 0
    queue_full_429: int = 0  # of the refusals, 429s (the rest are 503s)
    loop_lag_max_ms: float | None = None
    loop_stalls_100ms: int | None = None


class Refused(Exception):
    """A 429 or 503: the server is busy; ``retry_after`` is its header (seconds), if any."""

    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(status)
        self.status = status
        self.retry_after = retry_after


class Level(msgspec.Struct):
    """One server at one concurrency: the rounds averaged, with the spread of p99."""

    mean: Result
    ttft_p99_min_ms: float
    ttft_p99_max_ms: float


def omniserve_command(model_path: str, data_dir: Path, port: int, max_running: int, max_queue_depth: int) -> list[str]:
    config = data_dir / "bench.toml"
    options = ", ".join(f"{key} = {msgspec.json.encode(value).decode()}" for key, value in ENGINE_OPTIONS.items())
    config.write_text(
        f'port = {port}\ndata_dir = "{data_dir}"\nlog_level = "warning"\n\n'
        # The benchmark reads the loop-lag gauge from /metrics without a key.
        '[metrics]\naccess = "open"\n\n'
        f"[limits]\nmax_running_per_model = {max_running}\nmax_queue_depth = {max_queue_depth}\n\n"
        f'[[models]]\nname = "{MODEL}"\nkind = "chat"\npath = "{model_path}"\noptions = {{ {options} }}\n'
    )
    return [sys.executable, "-m", "server", "serve", "--config", str(config)]


async def scrape_loop_lag(url: str) -> tuple[float, float, float] | None:
    """omniserve's worst loop delay since the previous scrape (which this one resets), the
    probe's wake-up count and how many of those were under 100 ms; None where not served."""
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
            if response.status != 200:
                return None
            text = await response.text()
    except aiohttp.ClientError:
        return None
    worst = count = under = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == LAG_MAX:
                worst = sample.value
            elif sample.name == LAG_COUNT:
                count = sample.value
            elif sample.name == LAG_UNDER_100MS and sample.labels.get("le") == "0.1":
                under = sample.value
    if worst is None or count is None or under is None:
        return None
    return worst, count, under


def vllm_command(model_path: str, port: int) -> list[str]:
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model_path, "--served-model-name", MODEL, "--port", str(port), "--host", "127.0.0.1",
        "--dtype", "float32", "--enforce-eager", "--max-model-len", str(ENGINE_OPTIONS["max_model_len"]),
        "--kv-cache-memory-bytes", str(ENGINE_OPTIONS["kv_cache_memory_bytes"]),
        "--disable-uvicorn-access-log", "--uvicorn-log-level", "warning",
    ]  # fmt: skip
    return command


async def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            try:
                async with session.post(
                    f"{url}/v1/chat/completions", json={"model": MODEL, "messages": PROMPT, "max_tokens": 2}
                ) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(1)
    raise TimeoutError("server not ready")


async def one_request(session: aiohttp.ClientSession, url: str, max_tokens: int) -> tuple[float, list[float]]:
    """Time to first token and inter-token gaps (seconds) of one streamed chat."""
    body = {"model": MODEL, "messages": PROMPT, "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    started = time.perf_counter()
    first = 0.0
    last = 0.0
    gaps: list[float] = []
    async with session.post(f"{url}/v1/chat/completions", json=body) as response:
        if response.status in (429, 503):
            await response.read()
            header = response.headers.get("Retry-After")
            raise Refused(response.status, float(header) if header else None)
        response.raise_for_status()
        async for raw in response.content:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = msgspec.json.decode(line[6:])
            choices = chunk.get("choices") or []
            if not choices or not choices[0].get("delta", {}).get("content"):
                continue
            now = time.perf_counter()
            if first == 0.0:
                first = now - started
            else:
                gaps.append(now - last)
            last = now
    return first, gaps


async def run_load(url: str, concurrency: int, duration_s: float, max_tokens: int) -> Result:
    ttfts: list[float] = []
    gaps: list[float] = []
    errors = 0
    refused: Counter[bool] = Counter()
    queue_full = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        stop_at = time.perf_counter() + duration_s

        async def worker() -> None:
            nonlocal errors, queue_full
            while time.perf_counter() < stop_at:
                try:
                    first, request_gaps = await one_request(session, url, max_tokens)
                except Refused as refusal:
                    refused[refusal.retry_after is not None] += 1
                    queue_full += refusal.status == 429
                    await asyncio.sleep(min(refusal.retry_after or 0.0, MAX_REFUSED_WAIT_S))
                    continue
                except (TimeoutError, aiohttp.ClientError):
                    errors += 1
                    continue
                ttfts.append(first)
                gaps.extend(request_gaps)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ordered = sorted(ttfts)
    return Result(
        concurrency=concurrency,
        requests_per_s=len(ttfts) / elapsed,
        ttft_p50_ms=1000 * statistics.median(ordered) if ordered else float("nan"),
        ttft_p99_ms=1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan"),
        itl_p50_ms=1000 * statistics.median(gaps) if gaps else float("nan"),
        completed=len(ttfts),
        errors=errors,
        refused_with_retry_after=refused[True],
        refused_without_retry_after=refused[False],
        queue_full_429=queue_full,
    )


async def measured_load(server: Server, concurrency: int, duration_s: float, max_tokens: int) -> Result:
    """One turn of load, with omniserve's loop lag over it where /metrics serves the probe."""
    before = await scrape_loop_lag(server.url)
    result = await run_load(server.url, concurrency, duration_s, max_tokens)
    after = await scrape_loop_lag(server.url)
    if before is not None and after is not None:
        result.loop_lag_max_ms = 1000 * after[0]
        result.loop_stalls_100ms = round((after[1] - before[1]) - (after[2] - before[2]))
    return result


class Server:
    def __init__(self, name: str, command: list[str], port: int) -> None:
        self.name = name
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(Path(tempfile.gettempdir()) / f"bench-{name}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(command, stdout=self.log, stderr=self.log, cwd=ROOT)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def summarize(results: list[Result]) -> Level:
    lags = [r.loop_lag_max_ms for r in results if r.loop_lag_max_ms is not None]
    stalls = [r.loop_stalls_100ms for r in results if r.loop_stalls_100ms is not None]
    p99s = [r.ttft_p99_ms for r in results]
    mean = Result(
        concurrency=results[0].concurrency,
        requests_per_s=statistics.mean(r.requests_per_s for r in results),
        ttft_p50_ms=statistics.mean(r.ttft_p50_ms for r in results),
        ttft_p99_ms=statistics.mean(p99s),
        itl_p50_ms=statistics.mean(r.itl_p50_ms for r in results),
        completed=sum(r.completed for r in results),
        errors=sum(r.errors for r in results),
        refused_with_retry_after=sum(r.refused_with_retry_after for r in results),
        refused_without_retry_after=sum(r.refused_without_retry_after for r in results),
        queue_full_429=sum(r.queue_full_429 for r in results),
        loop_lag_max_ms=max(lags) if lags else None,
        loop_stalls_100ms=sum(stalls) if stalls else None,
    )
    return Level(mean=mean, ttft_p99_min_ms=min(p99s), ttft_p99_max_ms=max(p99s))


async def bench(
    servers: list[Server], levels: list[int], rounds: int, duration_s: float, max_tokens: int
) -> dict[str, list[Level]]:
    """Both servers stay up (an idle server costs next to nothing); at each level they take
    turns, alternating who goes first, so drift on the machine hits both alike."""
    for server in servers:
        started = time.monotonic()
        await wait_ready(server.url, server.process)
        print(f"{server.name}: ready in {time.monotonic() - started:.0f} s", flush=True)
        await run_load(server.url, 4, 3, max_tokens)  # warm-up
    summary: dict[str, list[Level]] = {server.name: [] for server in servers}
    for level in levels:
        runs: dict[str, list[Result]] = {server.name: [] for server in servers}
        for round_index in range(rounds):
            order = servers if round_index % 2 == 0 else list(reversed(servers))
            for server in order:
                result = await measured_load(server, level, duration_s, max_tokens)
                print(f"  {server.name} c={level} round {round_index + 1}: {msgspec.json.encode(result).decode()}")
                runs[server.name].append(result)
        for name, results in runs.items():
            summary[name].append(summarize(results))
    return summary


def ratio(ours: float, theirs: float, higher_is_better: bool) -> str:
    if not ours or not theirs:
        return "n/a"
    return f"{(ours / theirs) if higher_is_better else (theirs / ours):.2f}"


def print_table(ours: list[Level], theirs: list[Level] | None, rounds: int) -> None:
    print(
        "| c | server | req/s | TTFT p50 ms | TTFT p99 ms | p99 min..max | ITL p50 ms | 200 | 429 "
        "| 429/503 (+RA / -RA) | errors | loop lag max ms | lag >=100 ms |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for index, a in enumerate(ours):
        rows = [("omniserve", a)] + ([("vLLM", theirs[index])] if theirs else [])
        for name, level in rows:
            r = level.mean
            lag = f"{r.loop_lag_max_ms:.1f}" if r.loop_lag_max_ms is not None else "n/a"
            stalls = str(r.loop_stalls_100ms) if r.loop_stalls_100ms is not None else "n/a"
            print(
                f"| {r.concurrency} | {name} | {r.requests_per_s:.2f} | {r.ttft_p50_ms:.1f} | {r.ttft_p99_ms:.1f} "
                f"| {level.ttft_p99_min_ms:.0f}..{level.ttft_p99_max_ms:.0f} | {r.itl_p50_ms:.2f} | {r.completed} "
                f"| {r.queue_full_429} | {r.refused_with_retry_after} / {r.refused_without_retry_after} | {r.errors} "
                f"| {lag} | {stalls} |"
            )
        if theirs:
            x, y = a.mean, theirs[index].mean
            print(
                f"| {x.concurrency} | **ratio** | {ratio(x.requests_per_s, y.requests_per_s, True)} "
                f"| {ratio(x.ttft_p50_ms, y.ttft_p50_ms, False)} | {ratio(x.ttft_p99_ms, y.ttft_p99_ms, False)} | "
                f"| {ratio(x.itl_p50_ms, y.itl_p50_ms, False)} | | | | | | |"
            )
    print(
        f"\n{rounds} rounds per server and level; req/s, p50s and p99 are means over rounds, p99 min..max their "
        "spread, counts are totals; latencies are of the accepted (200) streams.\nratios: req/s omniserve/vLLM; "
        "latencies vLLM/omniserve (above 1.0 means omniserve is better).\nloop lag: omniserve's worst event-loop "
        "delay in any round of the level, and its 25 ms probe's wake-ups that came 100 ms or more late (vLLM has no "
        "such probe)."
    )


def check_refusals(ours: list[Level]) -> bool:
    """Every refusal omniserve gave carried Retry-After; prints one line per level that refused."""
    ok = True
    for level in ours:
        r = level.mean
        refused = r.refused_with_retry_after + r.refused_without_retry_after
        if refused:
            verdict = "all with Retry-After" if not r.refused_without_retry_after else "SOME WITHOUT Retry-After"
            print(f"omniserve c={r.concurrency}: {r.queue_full_429} 429s, {refused - r.queue_full_429} 503s: {verdict}")
        ok = ok and not r.refused_without_retry_after
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per turn")
    parser.add_argument("--concurrency", default="1,16,64,256", help="comma-separated levels")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="turns per server at each level")
    parser.add_argument("--model-path", help="a chat model folder (default: build the demo chat model)")
    parser.add_argument("--max-running", type=int, default=64, help="omniserve's limits.max_running_per_model")
    parser.add_argument("--max-queue-depth", type=int, default=64, help="omniserve's limits.max_queue_depth")
    parser.add_argument("--omniserve-only", action="store_true", help="do not start vLLM's own server")
    args = parser.parse_args()
    levels = [int(level) for level in args.concurrency.split(",")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="omniserve-bench-"))
    model_path = args.model_path
    if model_path is None:
        from engines.demo import build_demo_models

        model_path = next(spec.path for spec in build_demo_models(work / "models") if spec.name == MODEL)
    omniserve_port, vllm_port = free_port(), free_port()
    command = omniserve_command(model_path, work, omniserve_port, args.max_running, args.max_queue_depth)
    servers = [Server("omniserve", command, omniserve_port)]
    if not args.omniserve_only:
        servers.append(Server("vllm", vllm_command(model_path, vllm_port), vllm_port))
    try:
        summary = asyncio.run(bench(servers, levels, args.rounds, args.duration, args.max_tokens))
    finally:
        for server in servers:
            server.stop()
    ours, theirs = summary["omniserve"], summary.get("vllm")
    print()
    print(f"omniserve: limits.max_running_per_model {args.max_running}, limits.max_queue_depth {args.max_queue_depth}")
    print_table(ours, theirs, args.rounds)
    if not check_refusals(ours):
        sys.exit(1)


if __name__ == "__main__":
    main()
