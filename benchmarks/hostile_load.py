"""Hostile input against a real omniserve process: what each attack gets back, and what it costs everyone else.

Starts `python -m server serve` on a small demo catalog (demo-chat-tiny, demo-sd, demo-whisper-tiny),
open on loopback (no keys), with a temp data dir and `OMNISERVE_TASKS__ALLOW_PRIVATE_URLS=true`
so that the attack servers this script runs on loopback can be named as image URLs. Then, one
attack at a time, it records:

  status        the status code(s) the attack got (or `closed` / `open` / `timeout` for a
                connection the server cut, left open, or a request that got no answer in time)
  answered      seconds until the attack was answered or its connection cut (p50 / max for many)
  /health       p50 and worst latency of `GET /health`, polled every 20 ms on one keep-alive
                connection by a separate process, from the attack's start until 1 s after it
                ended (at least 2 s): what other clients see meanwhile
  worst/anchor  that worst as a ratio to the worst of the anchor row: the same poll for a few
                seconds with no attack, earlier in the same run
  RSS growth    peak resident memory of the server process and its children (vLLM's engine
                core runs in one) over the attack window, less their sum just before it

It measures and prints; it asserts nothing. The attacks:

  1  chat template bomb: a 100M-iteration Jinja loop as chat_template_kwargs.chat_template and
     as a top-level chat_template (/v1/chat/completions)
  2  slowloris: 300 connections trickling request headers and 50 trickling a body, one byte a
     second, for --slowloris-s seconds
  3  deep JSON: 5000 nested arrays in a /v1/chat/completions and a /v3/async/txt2img body
  4  a 5 MiB negative_prompt to /v3/async/txt2img and /v1/images/generations, each sent as a
     client on a network would (the headers, then the body after a pause, so the server reads
     the headers alone); and to /v3/async/txt2img once more with headers and body in one write,
     as aiohttp sends a bytes body (4c)
  5  lying audio: an MP3 whose header declares 2 s and that holds 30 min, to /v1/audio/transcriptions
     (headers first, as in 4)
  6  Stable Diffusion API img2img whose init_image trickles one byte every 0.5 s, and one whose
     init_image is 200 MiB streamed without a length
  7  Novassium 16384x16384 x 7 samples
  8  /v1/completions with 2048 prompts x n=16
  9  a flood: 200 concurrent chats with max_tokens 1 (200s against 429/503, and Retry-After)

Two server settings differ from the defaults, so that the run shows their cut within minutes:
`audio.max_duration_s` (--audio-limit-s, default 600: a 30 min file is within the default 3600 s,
and would be transcribed, not refused) and `limits.body_timeout_s` (--body-timeout-s, default
10; the default 120 s is longer than a trickled body is held here). Both are printed with the table.

    python benchmarks/hostile_load.py [--only 1,2,9] [--anchor-s 5] [--slowloris-s 12]
                                      [--demo-root DIR] [--audio-limit-s 600] [--body-timeout-s 10]

The load generator and the attack servers run in this process, the /health poller and memory
sampler in another, all on the same machine as the server: on a small machine they share its
cores, and the anchor row, taken in the same run, is the measure to compare with.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import free_port, load  # noqa: E402
from v3_clients import Server, toml_value, wait_ready  # noqa: E402

from tests.audio_inputs import lying_mp3  # noqa: E402

HOST = "127.0.0.1"
CHAT_MODEL = "demo-chat-tiny"
IMAGE_MODEL = "demo-sd"
STT_MODEL = "demo-whisper-tiny"

POLL_S = 0.020  # /health every 20 ms
RSS_EVERY_S = 0.050
HEALTH_TIMEOUT_S = 10.0
MIN_WINDOW_S = 2.0  # a fast attack is still watched this long, for what it leaves running
TAIL_S = 1.0  # and this long after its answer
SETTLE_S = 1.0  # between attacks
REQUEST_TIMEOUT_S = 90.0
# Large bodies (4a, 4b, 5) go out after their headers with this pause, so the server reads the
# headers alone, as it would from a client on a real network; 4c sends them in one write.
HEADERS_FIRST_PAUSE_S = 0.05

BOMB = "{% for a in range(100000000) %}x{% endfor %}"
NESTING = 5000
NEGATIVE_PROMPT_BYTES = 5 * 1024 * 1024
DECLARED_AUDIO_S = 2.0
HELD_AUDIO_S = 30 * 60.0
AUDIO_CHUNK_S = 60.0  # the held audio is one encoded minute, repeated
TRICKLE_EVERY_S = 0.5
TRICKLE_MAX_S = 90.0  # the trickling image server gives up after this long
HUGE_IMAGE_BYTES = 200 * 1024 * 1024
HUGE_CHUNK = 64 * 1024
FAN_OUT_PROMPTS, FAN_OUT_N = 2048, 16
FLOOD = 200
SLOW_HEADERS, SLOW_BODIES = 300, 50
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- the watcher (another process)


def watch(port: int, pid: int, results: Connection, stop: Event) -> None:
    """Poll /health every POLL_S on one keep-alive connection and sample the RSS of `pid` and its
    children every RSS_EVERY_S until `stop`; then send (health, rss) samples through `results`:
    health as (monotonic start, latency s, answered 200), rss as (monotonic, bytes)."""
    import psutil

    health: list[tuple[float, float, bool]] = []
    rss: list[tuple[float, int]] = []

    def sample_rss() -> None:
        root = psutil.Process(pid)
        while not stop.is_set():
            at = time.monotonic()
            total = 0
            try:
                processes = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            for process in processes:
                with contextlib.suppress(psutil.Error):  # a child that exited since the listing
                    total += process.memory_info().rss
            rss.append((at, total))
            stop.wait(RSS_EVERY_S)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    connection: http.client.HTTPConnection | None = None
    next_at = time.monotonic()
    while not stop.is_set():
        started = time.monotonic()
        ok = False
        try:
            if connection is None:
                connection = http.client.HTTPConnection(HOST, port, timeout=HEALTH_TIMEOUT_S)
            connection.request("GET", "/health")
            response = connection.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            if connection is not None:
                connection.close()
            connection = None
        health.append((started, time.monotonic() - started, ok))
        next_at += POLL_S
        delay = next_at - time.monotonic()
        if delay <= 0:
            next_at = time.monotonic()  # late: poll again at once, then keep the period from here
        else:
            stop.wait(delay)
    sampler.join(timeout=5)
    results.send((health, rss))
    results.close()


class Watcher:
    def __init__(self, port: int, pid: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=watch, args=(port, pid, send, self._stop), daemon=True)
        self._process.start()
        send.close()

    def finish(self) -> tuple[list[tuple[float, float, bool]], list[tuple[float, int]]]:
        self._stop.set()
        health, rss = self._receive.recv()
        self._process.join(timeout=10)
        return health, rss


# ---------------------------------------------------------------- what one attack got


class Outcome(msgspec.Struct):
    statuses: list[str]
    seconds: list[float]
    answer: str = ""  # the first error answer's code and message, shortened
    note: str = ""


class Row(msgspec.Struct):
    number: str
    name: str
    outcome: Outcome | None
    start: float
    end: float


def short_answer(body: bytes) -> str:
    """The error code and message of an answer, in a few words."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body[:60].decode("utf-8", "replace").strip()
    if not isinstance(data, dict):
        return ""
    error: dict[str, Any] = data["error"] if isinstance(data.get("error"), dict) else data
    code = error.get("code") or error.get("reason") or error.get("status") or ""
    message = str(error.get("message") or error.get("messege") or error.get("detail") or "")
    text = f"{code}: {message}" if code and message else str(code or message)
    return text[:90] + ("..." if len(text) > 90 else "")


class Client(msgspec.Struct):
    session: aiohttp.ClientSession
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"


async def call(
    client: Client,
    path: str,
    *,
    body: Any = None,
    data: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[str, float, str, bool]:
    """POST to the server: (status, seconds to the answer, short answer, whether Retry-After came)."""
    started = time.monotonic()
    try:
        async with client.session.post(f"{client.base_url}{path}", json=body, data=data, headers=headers) as response:
            raw = await response.read()
            answer = short_answer(raw) if response.status >= 400 else ""
            return str(response.status), time.monotonic() - started, answer, "Retry-After" in response.headers
    except TimeoutError:
        return "timeout", time.monotonic() - started, "", False
    except aiohttp.ClientError as error:
        return type(error).__name__, time.monotonic() - started, str(error)[:60], False


async def post_headers_first(client: Client, path: str, body: bytes, content_type: str) -> tuple[str, float, str]:
    """POST over a connection of its own: the headers, a pause of HEADERS_FIRST_PAUSE_S, then the
    body, so that the server reads the headers before any of the body (status, seconds, answer)."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(HOST, client.port)
    except OSError as error:
        return type(error).__name__, time.monotonic() - started, ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{client.port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        writer.write(head)
        await writer.drain()
        await asyncio.sleep(HEADERS_FIRST_PAUSE_S)
        with contextlib.suppress(OSError):  # an early answer closes the connection; it is read below
            writer.write(body)
            await writer.drain()
        raw = await asyncio.wait_for(reader.read(), REQUEST_TIMEOUT_S)  # Connection: close: to the end
    except TimeoutError:
        return "timeout", time.monotonic() - started, ""
    except OSError as error:
        return type(error).__name__, time.monotonic() - started, ""
    finally:
        writer.close()
    seconds = time.monotonic() - started
    status_line, _, rest = raw.partition(b"\r\n")
    if not status_line.startswith(b"HTTP/1."):
        return "closed", seconds, ""
    status = status_line.split(b" ")[1].decode()
    return status, seconds, short_answer(rest.partition(b"\r\n\r\n")[2]) if int(status) >= 400 else ""


def single(status: str, seconds: float, answer: str, note: str = "") -> Outcome:
    return Outcome(statuses=[status], seconds=[seconds], answer=answer, note=note)


# ---------------------------------------------------------------- attack servers (image URLs)


class ImageSources:
    """A loopback HTTP server the Stable Diffusion API is sent to for init_image: /trickle sends
    a PNG signature one byte every TRICKLE_EVERY_S, /huge 200 MiB without a Content-Length.
    Each records what it sent before the server hung up."""

    def __init__(self) -> None:
        self.sent: dict[str, tuple[int, float]] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> ImageSources:
        app = web.Application()
        app.router.add_get("/trickle", self._trickle)
        app.router.add_get("/huge", self._huge)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, HOST, port).start()
        self.url = f"http://{HOST}:{port}"
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _trickle(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        started = time.monotonic()
        sent = 0
        try:
            while time.monotonic() - started < TRICKLE_MAX_S:
                index = sent % len(PNG_MAGIC)
                await response.write(PNG_MAGIC[index : index + 1])
                sent += 1
                await asyncio.sleep(TRICKLE_EVERY_S)
        except (ConnectionError, RuntimeError):
            pass  # the server hung up
        finally:
            self.sent["trickle"] = (sent, time.monotonic() - started)
        return response

    async def _huge(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        started = time.monotonic()
        chunk = PNG_MAGIC + bytes(HUGE_CHUNK - len(PNG_MAGIC))
        sent = 0
        try:
            while sent < HUGE_IMAGE_BYTES:
                await response.write(chunk)
                sent += len(chunk)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self.sent["huge"] = (sent, time.monotonic() - started)
        return response


# ---------------------------------------------------------------- the attacks


def chat_body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1, **extra}


async def template_in_kwargs(client: Client, model: str) -> Outcome:
    body = chat_body(model, chat_template_kwargs={"chat_template": BOMB})
    return single(*(await call(client, "/v1/chat/completions", body=body))[:3])


async def template_top_level(client: Client, model: str) -> Outcome:
    body = chat_body(model, chat_template=BOMB)
    return single(*(await call(client, "/v1/chat/completions", body=body))[:3])


async def trickle_connection(port: int, prefix: bytes, trickled: bytes, hold_s: float) -> tuple[str, float]:
    """Open a connection, send `prefix` at once and then `trickled` one byte a second for up to
    `hold_s`: (what the server did, seconds from the connect). `408` (or another status) for an
    answer, `closed` for a close without one, `open` if it still held at the end."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError as error:
        return type(error).__name__, time.monotonic() - started

    async def first_read() -> tuple[bytes, float]:
        try:
            data = await reader.read(4096)
        except OSError:
            data = b""
        return data, time.monotonic()

    reading = asyncio.create_task(first_read())
    try:
        if prefix:
            writer.write(prefix)
        for index in range(len(trickled)):
            if reading.done() or time.monotonic() - started >= hold_s:
                break
            try:
                writer.write(trickled[index : index + 1])
                await writer.drain()
            except OSError:
                break
            await asyncio.wait({reading}, timeout=1.0)
        if not reading.done():
            await asyncio.wait({reading}, timeout=max(0.0, hold_s - (time.monotonic() - started)))
        if not reading.done():
            reading.cancel()
            return "open", time.monotonic() - started
        data, at = reading.result()
        if data.startswith(b"HTTP/1."):
            return data.split(b" ", 2)[1].decode(), at - started
        return "closed", at - started
    finally:
        writer.close()


async def slowloris(port: int, hold_s: float) -> Outcome:
    headers = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\nX-Padding: "
        + b"a" * 4096
        + b"\r\n\r\n"
    )
    body_headers = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    )
    body = b'{"model": "' + b"x" * 99_980 + b'"}'
    results = await asyncio.gather(
        *(trickle_connection(port, b"", headers, hold_s) for _ in range(SLOW_HEADERS)),
        *(trickle_connection(port, body_headers, body, hold_s) for _ in range(SLOW_BODIES)),
    )
    header_results, body_results = results[:SLOW_HEADERS], results[SLOW_HEADERS:]

    def summary(label: str, part: list[tuple[str, float]]) -> str:
        counts = Counter(status for status, _ in part)
        times = [seconds for _, seconds in part]
        listed = ", ".join(f"{status} x{count}" for status, count in counts.most_common())
        return f"{label}: {listed}, at p50 {statistics.median(times):.1f} s / max {max(times):.1f} s"

    return Outcome(
        statuses=[status for status, _ in results],
        seconds=[seconds for _, seconds in results],
        note=f"{summary('headers', list(header_results))}; {summary('bodies', list(body_results))}",
    )


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


async def deep_chat(client: Client, model: str) -> Outcome:
    raw = b'{"model": ' + msgspec.json.encode(model) + b', "messages": ' + nested(NESTING) + b"}"
    answer = await call(client, "/v1/chat/completions", data=raw, headers={"Content-Type": "application/json"})
    return single(*answer[:3])


async def deep_txt2img(client: Client) -> Outcome:
    raw = b'{"request": ' + nested(NESTING) + b', "extra": {}}'
    answer = await call(client, "/v3/async/txt2img", data=raw, headers={"Content-Type": "application/json"})
    return single(*answer[:3])


def long_negative_prompt() -> str:
    words = "blurry, lowres, bad anatomy, extra fingers, watermark, "
    return (words * (NEGATIVE_PROMPT_BYTES // len(words) + 1))[:NEGATIVE_PROMPT_BYTES]


async def negative_txt2img(client: Client, *, one_write: bool = False) -> Outcome:
    body = {
        "request": {
            "model_name": IMAGE_MODEL,
            "prompt": "a lighthouse",
            "negative_prompt": long_negative_prompt(),
            "width": 128,
            "height": 128,
            "steps": 2,
            "image_num": 1,
            "guidance_scale": 7.5,
            "sampler_name": "Euler a",
        },
        "extra": {"response_image_type": "png"},
    }
    if one_write:
        return single(*(await call(client, "/v3/async/txt2img", body=body))[:3])
    raw = msgspec.json.encode(body)
    return single(*await post_headers_first(client, "/v3/async/txt2img", raw, "application/json"))


async def negative_generations(client: Client) -> Outcome:
    body = {
        "model": IMAGE_MODEL,
        "prompt": "a lighthouse",
        "negative_prompt": long_negative_prompt(),
        "size": "128x128",
        "steps": 2,
        "response_format": "b64_json",
    }
    raw = msgspec.json.encode(body)
    return single(*await post_headers_first(client, "/v1/images/generations", raw, "application/json"))


async def lying_audio(client: Client, audio: bytes) -> Outcome:
    boundary = "hostile-load-boundary"
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{STT_MODEL}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="lying.mp3"\r\n'
            "Content-Type: audio/mpeg\r\n\r\n"
        ).encode()
        + audio
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, seconds, answer = await post_headers_first(
        client, "/v1/audio/transcriptions", form, f"multipart/form-data; boundary={boundary}"
    )
    return single(status, seconds, answer, note=f"{len(audio) / 2**20:.1f} MiB upload")


async def sdapi_img2img(client: Client, sources: ImageSources, path: str) -> Outcome:
    body = {
        "prompt": "a lighthouse",
        "init_image": f"{sources.url}/{path}",
        "width": 256,
        "height": 256,
        "samples": 1,
        "num_inference_steps": 2,
        "track_id": path,
    }
    status, seconds, answer, _ = await call(client, "/api/v3/img2img", body=body)
    await asyncio.sleep(0.3)  # the source handler notices the hang-up
    sent, held = sources.sent.get(path, (0, 0.0))
    unit = f"{sent} bytes" if path == "trickle" else f"{sent / 2**20:.1f} MiB"
    return single(status, seconds, answer, note=f"the source wrote {unit} over {held:.1f} s before the hang-up")


async def novassium_huge(client: Client) -> Outcome:
    body = {
        "prompt": "a lighthouse",
        "style_preset": "enhance",
        "aspect_ratio": "1:1",
        "output_format": "png",
        "width": 16384,
        "height": 16384,
        "samples": 7,
    }
    return single(*(await call(client, "/api/novassium/v1/generate", body=body))[:3])


async def fan_out(client: Client, model: str) -> Outcome:
    body = {"model": model, "prompt": ["hello"] * FAN_OUT_PROMPTS, "n": FAN_OUT_N, "max_tokens": 1}
    return single(*(await call(client, "/v1/completions", body=body))[:3])


async def flood(client: Client, model: str) -> Outcome:
    answers = await asyncio.gather(*(call(client, "/v1/chat/completions", body=chat_body(model)) for _ in range(FLOOD)))
    refused = [answer for answer in answers if answer[0] in ("429", "503")]
    with_retry = sum(1 for answer in refused if answer[3])
    first_error = next((answer[2] for answer in answers if answer[2]), "")
    times = [answer[1] for answer in answers]
    note = (
        f"{len(refused)} refused with 429/503, {with_retry} of them with Retry-After; "
        f"answered p50 {statistics.median(times):.1f} s"
    )
    return Outcome(statuses=[a[0] for a in answers], seconds=times, answer=first_error, note=note)


# ---------------------------------------------------------------- running and reporting


def statuses_text(statuses: list[str]) -> str:
    counts = Counter(statuses)
    if len(counts) == 1 and len(statuses) == 1:
        return statuses[0]
    return ", ".join(f"{status} x{count}" for status, count in counts.most_common())


def seconds_text(seconds: list[float]) -> str:
    if len(seconds) == 1:
        return f"{seconds[0]:.2f} s"
    return f"p50 {statistics.median(seconds):.2f} / max {max(seconds):.2f} s"


class Stats(msgspec.Struct):
    p50_ms: float
    worst_ms: float
    polls: int
    failed: int
    rss_growth_mib: float


def window_stats(row: Row, health: list[tuple[float, float, bool]], rss: list[tuple[float, int]]) -> Stats:
    polls = [(latency, ok) for at, latency, ok in health if row.start <= at <= row.end]
    latencies = [latency * 1000 for latency, _ in polls]
    before = [value for at, value in rss if at < row.start]
    during = [value for at, value in rss if row.start <= at <= row.end]
    growth = (max(during) - before[-1]) / 2**20 if before and during else float("nan")
    return Stats(
        p50_ms=statistics.median(latencies) if latencies else float("nan"),
        worst_ms=max(latencies) if latencies else float("nan"),
        polls=len(polls),
        failed=sum(1 for _, ok in polls if not ok),
        rss_growth_mib=growth,
    )


def print_table(rows: list[Row], health: list[tuple[float, float, bool]], rss: list[tuple[float, int]]) -> None:
    stats = [window_stats(row, health, rss) for row in rows]
    anchor_worst = stats[0].worst_ms
    print(
        "\n| # | attack | status | answered / cut | /health p50 ms | /health worst ms | worst / anchor "
        "| /health polls (failed) | RSS peak growth MiB | answer / note |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row, stat in zip(rows, stats, strict=True):
        outcome = row.outcome
        ratio = stat.worst_ms / anchor_worst if anchor_worst else float("nan")
        detail = "; ".join(part for part in (outcome.answer, outcome.note) if part) if outcome else ""
        print(
            f"| {row.number} | {row.name} | {statuses_text(outcome.statuses) if outcome else '-'} "
            f"| {seconds_text(outcome.seconds) if outcome else '-'} | {stat.p50_ms:.1f} | {stat.worst_ms:.1f} "
            f"| {ratio:.2f} | {stat.polls} ({stat.failed}) | {stat.rss_growth_mib:+.1f} "
            f"| {detail.replace('|', '/')} |"
        )


def server_config(work: Path, specs: list[Any], port: int, args: argparse.Namespace) -> Path:
    config = work / "hostile.toml"
    models = "".join(
        f"\n[[models]]\nname = {toml_value(spec.name)}\nkind = {toml_value(spec.kind.value)}\n"
        f"engine = {toml_value(spec.engine)}\npath = {toml_value(spec.path)}\noptions = {toml_value(spec.options)}\n"
        for spec in specs
    )
    config.write_text(
        f"host = {toml_value(HOST)}\nport = {port}\ndata_dir = {toml_value(str(work / 'data'))}\n"
        'log_level = "warning"\n\n'
        f"[limits]\nbody_timeout_s = {toml_value(args.body_timeout_s)}\n\n"
        f"[audio]\nmax_duration_s = {toml_value(args.audio_limit_s)}\n"
        # Novassium draws small on the tiny demo model (the refusals measured here come first anyway).
        "\n[vendor]\nnovassium_max_side = 256\nnovassium_steps = 2\n" + models
    )
    return config


def demo_specs(root: Path) -> list[Any]:
    from engines.audio.stt_demo import build_stt_demo_models
    from engines.demo import build_demo_models
    from engines.image.demo import build_image_demo_models

    specs = [*build_demo_models(root), *build_image_demo_models(root), *build_stt_demo_models(root)]
    wanted = (CHAT_MODEL, IMAGE_MODEL, STT_MODEL)
    return [spec for spec in specs if spec.name in wanted]


async def chat_model_name(client: Client) -> str:
    async with client.session.get(f"{client.base_url}/v1/models") as response:
        listing = msgspec.json.decode(await response.read())
    names = [model["id"] for model in listing.get("data", [])]
    return next((name for name in names if "chat" in name), CHAT_MODEL)


async def run(server: Server, port: int, args: argparse.Namespace, audio: bytes) -> None:
    await wait_ready(server)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session, ImageSources() as sources:
        client = Client(session=session, port=port)
        model = await chat_model_name(client)
        warm = await call(client, "/v1/chat/completions", body=chat_body(model))
        print(f"ready; chat model {model}, warm-up chat answered {warm[0]} in {warm[1]:.2f} s", flush=True)
        watcher = Watcher(port, server.process.pid)
        await asyncio.sleep(1.0)  # the watcher's interpreter starts
        attacks: list[tuple[str, str, Callable[[], Awaitable[Outcome]]]] = [
            ("1a", "chat template bomb, chat_template_kwargs", lambda: template_in_kwargs(client, model)),
            ("1b", "chat template bomb, top-level chat_template", lambda: template_top_level(client, model)),
            (
                "2",
                f"slowloris: {SLOW_HEADERS} header + {SLOW_BODIES} body tricklers, {args.slowloris_s:g} s",
                lambda: slowloris(port, args.slowloris_s),
            ),
            ("3a", f"deep JSON ({NESTING} levels), /v1/chat/completions", lambda: deep_chat(client, model)),
            ("3b", f"deep JSON ({NESTING} levels), /v3/async/txt2img", lambda: deep_txt2img(client)),
            ("4a", "5 MiB negative_prompt, /v3/async/txt2img", lambda: negative_txt2img(client)),
            ("4b", "5 MiB negative_prompt, /v1/images/generations", lambda: negative_generations(client)),
            (
                "4c",
                "5 MiB negative_prompt, /v3/async/txt2img, headers and body in one write",
                lambda: negative_txt2img(client, one_write=True),
            ),
            (
                "5",
                f"lying MP3 (declares {DECLARED_AUDIO_S:g} s, holds {HELD_AUDIO_S / 60:g} min), transcriptions",
                lambda: lying_audio(client, audio),
            ),
            (
                "6a",
                "SD API img2img, init_image trickles 1 B / 0.5 s",
                lambda: sdapi_img2img(client, sources, "trickle"),
            ),
            ("6b", "SD API img2img, init_image 200 MiB streamed", lambda: sdapi_img2img(client, sources, "huge")),
            ("7", "Novassium 16384x16384 x 7 samples", lambda: novassium_huge(client)),
            (
                "8",
                f"/v1/completions {FAN_OUT_PROMPTS} prompts x n={FAN_OUT_N}",
                lambda: fan_out(client, model),
            ),
            ("9", f"flood: {FLOOD} concurrent chats, max_tokens 1", lambda: flood(client, model)),
        ]
        chosen = [attack for attack in attacks if not args.only or attack[0].rstrip("abc") in args.only]
        anchor_start = time.monotonic()
        await asyncio.sleep(args.anchor_s)
        rows = [Row(number="0", name="anchor: no attack", outcome=None, start=anchor_start, end=time.monotonic())]
        print(f"anchor: {args.anchor_s:g} s of /health with no attack{load()}", flush=True)
        for number, name, attack in chosen:
            await asyncio.sleep(SETTLE_S)
            start = time.monotonic()
            outcome = await attack()
            answered = time.monotonic()
            end = max(answered + TAIL_S, start + MIN_WINDOW_S)
            await asyncio.sleep(max(0.0, end - time.monotonic()))
            rows.append(Row(number=number, name=name, outcome=outcome, start=start, end=end))
            print(
                f"[{number}] {name}: {statuses_text(outcome.statuses)} in {seconds_text(outcome.seconds)}"
                f"{'; ' + outcome.answer if outcome.answer else ''}{'; ' + outcome.note if outcome.note else ''}"
                f"{load()}",
                flush=True,
            )
            if server.process.poll() is not None:
                print(f"the server exited with {server.process.returncode}; see {server.log_path}", flush=True)
                break
        health, rss = watcher.finish()
    print_table(rows, health, rss)
    print(
        f"\nserver settings for this run: audio.max_duration_s = {args.audio_limit_s:g}, "
        f"limits.body_timeout_s = {args.body_timeout_s:g}, tasks.allow_private_urls = true; others default. "
        f"/health polled every {POLL_S * 1000:.0f} ms; windows run from each attack's start to "
        f"{TAIL_S:g} s after its answer (at least {MIN_WINDOW_S:g} s). Server log: {server.log_path}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="attack numbers to run, e.g. 1,5,9 (default: all)")
    parser.add_argument("--anchor-s", type=float, default=5.0, help="seconds of /health with no attack")
    parser.add_argument("--slowloris-s", type=float, default=12.0, help="how long the tricklers hold on")
    parser.add_argument("--audio-limit-s", type=float, default=600.0, help="the server's audio.max_duration_s")
    parser.add_argument("--body-timeout-s", type=float, default=10.0, help="the server's limits.body_timeout_s")
    parser.add_argument(
        "--demo-root",
        type=Path,
        default=Path(tempfile.gettempdir()) / "omniserve-hostile-demo",
        help="where the demo models are built (kept: a later run reuses them)",
    )
    args = parser.parse_args()
    args.only = {part.strip() for part in args.only.split(",") if part.strip()}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # The attack servers that init_image names listen on loopback.
    os.environ["OMNISERVE_TASKS__ALLOW_PRIVATE_URLS"] = "true"
    started = time.monotonic()
    specs = demo_specs(args.demo_root)
    audio = lying_mp3(DECLARED_AUDIO_S, HELD_AUDIO_S, chunk_s=AUDIO_CHUNK_S, bit_rate=32_000)
    print(f"demo models and the lying MP3 ready in {time.monotonic() - started:.1f} s", flush=True)
    work = Path(tempfile.mkdtemp(prefix="omniserve-hostile-"))
    port = free_port()
    command = [sys.executable, "-m", "server", "serve", "--config", str(server_config(work, specs, port, args))]
    server = Server(command, port, work / "server.log")
    try:
        asyncio.run(run(server, port, args, audio))
    finally:
        server.stop()
    print(f"whole run {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
