"""Requests/s on /openai/v1/embeddings with tracing on against tracing off.

Starts two omniserve servers on the demo embedding model, identical but for telemetry:
one with `exporter = "none"`, one exporting every span (sample ratio 1) over OTLP/HTTP
through the batch span processor to a collector stand-in on loopback, as an SRE would run
it next to a local collector. Both log at info (a JSON access line per request). The
servers take turns under the same load, alternating who goes first, and the script prints
each round, the mean requests/s of each and the on/off ratio.

    python benchmarks/telemetry_overhead.py [--duration 15] [--rounds 3] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Run as a script, this folder is on the path: the server launcher is shared with the LLM benchmark.
from llm_frontend import Server, free_port  # noqa: E402

MODEL = "demo-embed"
BODY = {"model": MODEL, "input": ["The river ran past the old library at dusk.", "A short second sentence."]}


class OtlpSink(http.server.BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP exports and counts them; what a local collector's receiver does first."""

    exports = 0
    received_bytes = 0

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        self.rfile.read(length)
        OtlpSink.exports += 1
        OtlpSink.received_bytes += length
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def start_sink() -> str:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OtlpSink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def omniserve_command(data_dir: Path, port: int, telemetry: str) -> list[str]:
    from engines.demo import demo_catalog

    spec = next(spec for spec in demo_catalog(data_dir / "models") if spec.name == MODEL)
    options = ", ".join(f"{key} = {msgspec.json.encode(value).decode()}" for key, value in spec.options.items())
    config = data_dir / f"bench-{port}.toml"
    config.write_text(
        f'port = {port}\ndata_dir = "{data_dir / str(port)}"\nlog_level = "info"\nlog_format = "json"\n\n'
        f"[telemetry]\n{telemetry}\n\n"
        f'[[models]]\nname = "{MODEL}"\nkind = "embedding"\npath = "{spec.path}"\noptions = {{ {options} }}\n'
    )
    return [sys.executable, "-m", "server", "serve", "--config", str(config)]


async def wait_ready(server: Server, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.name} exited with {server.process.returncode}")
            try:
                async with session.post(f"{server.url}/openai/v1/embeddings", json=BODY) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(1)
    raise TimeoutError(f"{server.name} not ready")


async def run_load(url: str, concurrency: int, duration_s: float) -> tuple[float, int]:
    """Requests/s and errors over ``duration_s`` of ``concurrency`` clients in a loop."""
    done = errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        stop_at = time.perf_counter() + duration_s

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < stop_at:
                try:
                    async with session.post(f"{url}/openai/v1/embeddings", json=BODY) as response:
                        await response.read()
                        if response.status == 200:
                            done += 1
                        else:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - started), errors


async def bench(servers: list[Server], rounds: int, duration_s: float, concurrency: int) -> dict[str, list[float]]:
    for server in servers:
        started = time.monotonic()
        await wait_ready(server)
        print(f"{server.name}: ready in {time.monotonic() - started:.0f} s", flush=True)
        await run_load(server.url, concurrency, 3)  # warm-up
    rates: dict[str, list[float]] = {server.name: [] for server in servers}
    for round_index in range(rounds):
        order = servers if round_index % 2 == 0 else list(reversed(servers))
        for server in order:
            rate, errors = await run_load(server.url, concurrency, duration_s)
            print(f"  round {round_index + 1} {server.name}: {rate:.1f} req/s ({errors} errors)", flush=True)
            rates[server.name].append(rate)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load per server per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="omniserve-telemetry-bench-"))
    sink = start_sink()
    off_port, on_port = free_port(), free_port()
    servers = [
        Server("tracing-off", omniserve_command(work, off_port, 'exporter = "none"'), off_port),
        Server(
            "tracing-on",
            omniserve_command(work, on_port, f'exporter = "otlp-http"\nendpoint = "{sink}"\nsample_ratio = 1.0'),
            on_port,
        ),
    ]
    try:
        rates = asyncio.run(bench(servers, args.rounds, args.duration, args.concurrency))
    finally:
        for server in servers:
            server.stop()
    off, on = statistics.mean(rates["tracing-off"]), statistics.mean(rates["tracing-on"])
    print(f"\ntracing off: {off:.1f} req/s   tracing on: {on:.1f} req/s   on/off: {on / off:.3f}")
    print(f"OTLP sink: {OtlpSink.exports} exports, {OtlpSink.received_bytes / 1e6:.2f} MB of spans received")


if __name__ == "__main__":
    main()
