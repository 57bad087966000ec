"""Speech to text: faster-whisper called directly against the same model behind omniserve's OpenAI route.

The real Whisper base (demo-whisper, joined from its packages into a temp dir) transcribes the
same files two ways, taking turns:

  direct     faster-whisper's `WhisperModel` in this process, `transcribe(path, ...)` on each file
             and every segment consumed; files over 30 s go through `BatchedInferencePipeline` with
             its voice activity detector, as omniserve does (engines/audio/whisper.py);
  omniserve  `python -m server serve` with a catalog of demo-whisper alone, and one client POSTing
             each file to /openai/v1/audio/transcriptions (multipart, response_format json) and
             reading the answer: the whole client path, upload and decoding included.

Both sides use the same settings: temperature 0 (pinned, no fallback), beam size 5, language
detection, one CTranslate2 thread per core (WhisperEngine's default), the stored compute type.
One request at a time: the server runs one decode per model at a time anyway. The clips are
espeak-ng speech: a short one (two sentences, ~10 s) and a long one (~56 s, batched).

For each clip it prints the real-time factor (processing seconds per second of audio; lower is
faster) of each side and the ratio omniserve/direct. Goal: omniserve within 5% of direct.

    python benchmarks/audio_stt.py [--pairs 8] [--warmup 1]

The server is started and the direct model loaded before anything is timed. Each clip is then
transcribed in pairs, one request per side back to back, alternating which side goes first, so
that both sides see the same background load (on a small shared machine it moves the times by
tens of percent within minutes); the figures are totals over all pairs. The client runs on the
same machine, and each pair prints the 1-minute load average.

Concurrency mode (`--concurrency N`) measures WhisperEngine's batching across requests instead:
N different short clips (two sentences each, 5-10 s) are submitted to the engine at once, in
this process, and the round's wall time gives clips per second. Three engines on the same model
take turns, round by round:

  on     the default: jobs that wait together share one decoder call (up to `batch_size`);
  alone  `batch_size` 1: the same batched window decoder, but one job per call;
  off    `batch_requests` false: each job through the sequential decoder, one after another.

on/off is what batching across requests gains; alone/off what the window decoder alone gains
(it reads the language from the encoder output it decodes, where the sequential decoder encodes
twice). Same settings as above: temperature 0, beam size 5, language detection.

    python benchmarks/audio_stt.py --concurrency 8 [--rounds 2] [--warmup 1]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine import free_port, load  # noqa: E402

from engines.audio.decoding import SAMPLE_RATE, decode_upload  # noqa: E402
from engines.audio.whisper import WINDOW_S, WhisperEngine, available_cores  # noqa: E402
from engines.base import ModelSpec, TranscriptionJob  # noqa: E402
from tests.audio_inputs import word_error_rate  # noqa: E402

MODEL = "demo-whisper"
BEAM_SIZE = 5
TEMPERATURE = 0.0
BATCH_SIZE = 8
GOAL_PERCENT = 5.0
SENTENCES = [
    "Hello, my name is Alice and I live in a small house near the sea.",
    "Please send me the report before the meeting on Monday morning.",
    "The train to the city leaves at seven o'clock every day.",
    "We bought fresh bread, cheese and apples at the market.",
]


# ---------------------------------------------------------------- clips


def espeak(text: str, out: Path) -> tuple[np.ndarray, int]:
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(out), text], check=True, capture_output=True, timeout=60)
    samples, rate = soundfile.read(out, dtype="float32")
    return samples, rate


def make_clips(work: Path) -> dict[str, tuple[Path, float]]:
    """name -> (WAV path, seconds): two sentences (short), and all four three times (long)."""
    spoken = [espeak(text, work / f"sentence-{i}.wav") for i, text in enumerate(SENTENCES)]
    rate = spoken[0][1]
    pause = np.zeros(int(0.8 * rate), dtype=np.float32)
    clips = {}
    for name, parts in (("short", spoken[:2]), ("long", spoken * 3)):
        samples = np.concatenate([piece for samples, _ in parts for piece in (samples, pause)])
        path = work / f"{name}.wav"
        soundfile.write(path, samples, rate, subtype="PCM_16")
        clips[name] = (path, len(samples) / rate)
    return clips


# ---------------------------------------------------------------- the two sides


class Direct:
    def __init__(self, spec: ModelSpec) -> None:
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        self.model = WhisperModel(spec.path, device="cpu", compute_type="default", cpu_threads=available_cores())
        self.batched = BatchedInferencePipeline(self.model)

    def transcribe(self, path: Path, seconds: float) -> str:
        options: dict[str, Any] = {"beam_size": BEAM_SIZE, "temperature": TEMPERATURE}
        if seconds > WINDOW_S:
            segments, _ = self.batched.transcribe(str(path), batch_size=BATCH_SIZE, vad_filter=True, **options)
        else:
            segments, _ = self.model.transcribe(str(path), vad_filter=False, **options)
        return "".join(segment.text for segment in segments).strip()


class Server:
    def __init__(self, spec: ModelSpec, work: Path) -> None:
        port = free_port()
        config = work / "bench.toml"
        config.write_text(
            f'host = "127.0.0.1"\nport = {port}\ndata_dir = "{work / "data"}"\nlog_level = "warning"\n\n'
            f'[[models]]\nname = "{spec.name}"\nkind = "{spec.kind.value}"\nengine = "{spec.engine}"\n'
            f'path = "{spec.path}"\n'
        )
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = work / "omniserve.log"
        self.log = self.log_path.open("wb")
        command = [sys.executable, "-m", "server", "serve", "--config", str(config)]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=self.log, cwd=ROOT)
        self.client = httpx.Client(timeout=600)

    def wait_ready(self, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self.log_path}")
            try:
                if self.client.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not ready in {timeout_s:.0f} s; see {self.log_path}")

    def transcribe(self, path: Path, seconds: float) -> str:
        response = self.client.post(
            f"{self.url}/openai/v1/audio/transcriptions",
            data={"model": MODEL, "temperature": str(TEMPERATURE), "response_format": "json"},
            files={"file": (path.name, path.read_bytes(), "audio/wav")},
        )
        if response.status_code != 200:
            raise RuntimeError(f"transcription answered {response.status_code}: {response.text}")
        return str(msgspec.json.decode(response.content)["text"])

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def timed(side: Any, path: Path, seconds: float) -> tuple[float, str]:
    started = time.perf_counter()
    text = side.transcribe(path, seconds)
    return time.perf_counter() - started, text


# ---------------------------------------------------------------- concurrency mode

CONFIGS = {"on": {}, "alone": {"batch_size": 1}, "off": {"batch_requests": False}}


def short_clips(work: Path, count: int) -> list[tuple[str, np.ndarray]]:
    """`count` different clips of two sentences each: (reference text, 16 kHz samples)."""

    spoken = [espeak(text, work / f"sentence-{i}.wav") for i, text in enumerate(SENTENCES)]
    rate = spoken[0][1]
    pause = np.zeros(int(0.5 * rate), dtype=np.float32)
    clips = []
    for k in range(count):
        first, second = k % len(SENTENCES), (k + 1 + k // len(SENTENCES)) % len(SENTENCES)
        if second == first:
            second = (second + 1) % len(SENTENCES)
        path = work / f"pair-{k}.wav"
        soundfile.write(path, np.concatenate([spoken[first][0], pause, spoken[second][0]]), rate, subtype="PCM_16")
        reference = f"{SENTENCES[first]} {SENTENCES[second]}"
        clips.append((reference, decode_upload(path.read_bytes(), max_duration_s=WINDOW_S)))
    return clips


def new_batch_sizes(engine: WhisperEngine, calls_before: int) -> list[int]:
    calls = engine.batches_run - calls_before
    return engine.batch_sizes[-calls:] if calls else []


async def concurrent_round(engine: WhisperEngine, clips: list[tuple[str, np.ndarray]]) -> tuple[float, list[str]]:
    jobs = [TranscriptionJob(audio=samples, temperature=TEMPERATURE, beam_size=BEAM_SIZE) for _, samples in clips]
    started = time.perf_counter()
    results = await asyncio.gather(*(engine.transcribe(job) for job in jobs))
    elapsed = time.perf_counter() - started
    return elapsed, ["".join(segment.text for segment in result.segments).strip() for result in results]


async def concurrency_benchmark(spec: ModelSpec, clips: list[tuple[str, np.ndarray]], args: argparse.Namespace) -> None:
    engines = {}
    for name, options in CONFIGS.items():
        engines[name] = WhisperEngine(msgspec.structs.replace(spec, options={**spec.options, **options}))
        await engines[name].load()
    totals = dict.fromkeys(CONFIGS, 0.0)
    texts: dict[str, list[str]] = {}
    order = list(CONFIGS)
    for round_index in range(-args.warmup, args.rounds):
        timed_round = round_index >= 0
        times = {}
        for name in order if round_index % 2 == 0 else order[::-1]:
            calls_before = engines[name].batches_run
            times[name], texts[name] = await concurrent_round(engines[name], clips)
            sizes = new_batch_sizes(engines[name], calls_before)
            if timed_round:
                totals[name] += times[name]
            print(
                f"  {'round ' + str(round_index + 1) if timed_round else 'warm-up'} {name}: "
                f"{times[name]:.1f} s, batched calls {sizes}{load()}",
                flush=True,
            )
    for engine in engines.values():
        await engine.unload()

    count = len(clips)
    seconds = [len(samples) / SAMPLE_RATE for _, samples in clips]
    print(
        f"\n{count} concurrent clips of {min(seconds):.1f}-{max(seconds):.1f} s, {args.rounds} timed round(s), "
        f"warm-up {args.warmup}, beam {BEAM_SIZE}, temperature {TEMPERATURE}, {available_cores()} core(s)\n"
    )
    print("| engine | clips/s | vs off |\n|---|---|---|")
    rate = {name: count * args.rounds / totals[name] for name in CONFIGS}
    for name in CONFIGS:
        print(f"| {name} | {rate[name]:.3f} | {rate[name] / rate['off']:.2f}x |")
    print(f"\nbatching across requests (on/off): {rate['on'] / rate['off']:.2f}x clips/s")
    for name in CONFIGS:
        wers = [word_error_rate(reference, text) for (reference, _), text in zip(clips, texts[name], strict=True)]
        print(f"  {name}: worst word error rate {max(wers):.2f}")
    differing = [k for k in range(count) if len({texts[name][k] for name in CONFIGS}) > 1]
    if differing:
        print(f"  note: the texts differ between engines for clip(s) {differing}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=8, help="timed requests per clip and side, taken in pairs")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted requests (rounds) per clip and side first")
    parser.add_argument("--concurrency", type=int, default=0, help="concurrency mode: this many clips at once")
    parser.add_argument("--rounds", type=int, default=2, help="concurrency mode: timed rounds per engine")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    wall_started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="omniserve-stt-bench-"))
    # Built in a child process: building imports torch, whose OpenMP runtime would then share
    # this process with CTranslate2's and slow the direct side down.
    build = [sys.executable, "-m", "engines.audio.stt_demo", str(work / "models")]
    subprocess.run(build, check=True, capture_output=True, cwd=ROOT, timeout=600)
    from engines.audio.stt_demo import stt_demo_catalog

    spec = next(s for s in stt_demo_catalog(work / "models") if s.name == MODEL)
    if args.concurrency > 0:
        asyncio.run(concurrency_benchmark(spec, short_clips(work, args.concurrency), args))
        print(f"total wall time: {time.monotonic() - wall_started:.1f} s")
        return
    clips = make_clips(work)
    print(f"built {MODEL} and clips under {work} in {time.monotonic() - wall_started:.1f} s", flush=True)

    server = Server(spec, work)
    try:
        server.wait_ready()
        direct = Direct(spec)
        totals = {(name, side): 0.0 for name in clips for side in ("direct", "omniserve")}
        sides: list[tuple[str, Any]] = [("direct", direct), ("omniserve", server)]
        for name, (path, seconds) in clips.items():
            for _, side in sides:
                for _ in range(args.warmup):
                    side.transcribe(path, seconds)
            for pair in range(args.pairs):
                texts: dict[str, str] = {}
                times: dict[str, float] = {}
                for side_name, side in sides if pair % 2 == 0 else sides[::-1]:
                    times[side_name], texts[side_name] = timed(side, path, seconds)
                    totals[name, side_name] += times[side_name]
                print(
                    f"  {name} pair {pair + 1}: direct RTF {times['direct'] / seconds:.4f}, "
                    f"omniserve RTF {times['omniserve'] / seconds:.4f}{load()}",
                    flush=True,
                )
                if texts["direct"] != texts["omniserve"]:
                    print(f"  note: the texts differ:\n    {texts['direct']}\n    {texts['omniserve']}")
    finally:
        server.stop()

    print(
        f"\nbeam {BEAM_SIZE}, temperature {TEMPERATURE}, {args.pairs} timed request(s) per clip and side, "
        f"warm-up {args.warmup}\n"
    )
    print("| clip | audio s | direct RTF | omniserve RTF | ratio omni/direct | overhead |\n|---|---|---|---|---|---|")
    worst = -math.inf
    for name, (_, seconds) in clips.items():
        audio_s = seconds * args.pairs
        direct_rtf, omni_rtf = totals[name, "direct"] / audio_s, totals[name, "omniserve"] / audio_s
        overhead = 100 * (omni_rtf / direct_rtf - 1)
        worst = max(worst, overhead)
        print(
            f"| {name} | {seconds:.1f} | {direct_rtf:.4f} | {omni_rtf:.4f} | {omni_rtf / direct_rtf:.3f} "
            f"| {overhead:+.1f}% |"
        )
    verdict = "met" if worst < GOAL_PERCENT else "NOT met"
    print(f"\ngoal: omniserve within {GOAL_PERCENT:.0f}% of direct on every clip: {verdict} (worst {worst:+.1f}%)")
    print(f"total wall time: {time.monotonic() - wall_started:.1f} s")


if __name__ == "__main__":
    main()
