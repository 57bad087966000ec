"""Text-to-speech throughput: Coqui called directly against the same model behind omniserve's /audio/speech.

The tiny demo VITS (demo-tts, built into a temp dir) speaks the same texts two ways, in turns:

  direct     Coqui's own `Synthesizer` loaded in this process, `tts(text, speaker_name=...)` per
             text, one after another (Coqui splits sentences and pads them, as omniserve does), on
             one worker thread as the engine runs it: torch's OpenMP threads started from the main
             thread ran the tiny model several times slower on a busy 2-core machine, which would
             flatter omniserve;
  omniserve  `python -m server serve` with a catalog of demo-tts alone; one client POSTs
             /v1/audio/speech per text and reads the streamed body to its end (response_format
             pcm: 16-bit 24 kHz, so the server also resamples; and mp3, the default, which also
             encodes).

It prints characters per second for each, and the ratio omniserve/direct. Goal: omniserve within
5% of the direct calls (ratio >= 0.95) for pcm. With both pcm and mp3 it also prints mp3's speed
as a share of pcm's (goal: at least 0.8, the cost of encoding) and mp3's quality: the
signal-to-noise ratio of the decoded mp3 against the pcm of the same text (synthesis is seeded,
so both carry the same samples).

    python benchmarks/audio_tts.py [--rounds 3] [--formats pcm,mp3]

The server is started and Coqui loaded before anything is timed; one warm-up pass runs on each
side first. The two sides never run at the same time; each measurement prints the 1-minute load
average, since other work on the machine skews both.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine import free_port, load  # noqa: E402

from engines.audio.tts_demo import SPEAKERS, TTS_MODEL, build_tts_demo_models  # noqa: E402

GOAL_RATIO = 0.95
MP3_GOAL_RATIO = 0.8  # mp3 chars/s over pcm chars/s
VOICE, SPEAKER = "alloy", SPEAKERS[0]  # the demo catalog maps alloy to the first speaker
TEXTS = [
    "The quick brown fox jumps over the lazy dog. Then it runs into the forest and is gone.",
    "Speech synthesis turns written words into sound. Each sentence is spoken on its own.",
    "A server that streams audio sends the first sentence while the next is being made. "
    "Listeners hear the start sooner, and the total time stays the same.",
    "Rain fell on the old town all night. In the morning the streets shone, and the market opened late.",
    "Numbers like 42 and 1999 are read as they are written. Punctuation shapes the pauses, doesn't it?",
    "She sells sea shells by the sea shore. The shells she sells are sea shells, I am sure.",
    "Every request names a model, a voice and a format. The answer is the audio itself, delivered as it is produced.",
    "Short one. Another short one. And a third, slightly longer sentence to finish the paragraph.",
]
CHARS = sum(len(text) for text in TEXTS)


class Direct:
    def __init__(self, model_dir: Path) -> None:
        from TTS.utils.synthesizer import Synthesizer

        self.synthesizer = Synthesizer(
            tts_checkpoint=str(model_dir / "model.pth"), tts_config_path=str(model_dir / "config.json")
        )
        self.worker = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def _speak_all(self) -> float:
        started = time.perf_counter()
        for text in TEXTS:
            if not len(self.synthesizer.tts(text, speaker_name=SPEAKER)):
                raise RuntimeError("Coqui returned no audio")
        return time.perf_counter() - started

    def run(self) -> float:
        return self.worker.submit(self._speak_all).result()


class Omniserve:
    def __init__(self, model_root: Path, work: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        config = work / "bench.toml"
        config.write_text(
            f'host = "127.0.0.1"\nport = {port}\ndata_dir = "{work / "data"}"\nlog_level = "warning"\n\n'
            f'[[models]]\nname = "{TTS_MODEL}"\nkind = "speech"\nengine = "coqui"\npath = "{model_root / TTS_MODEL}"\n'
        )
        self.log_path = work / "server.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        command = [sys.executable, "-m", "server", "serve", "--config", str(config)]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=self.log, cwd=ROOT)
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def wait_ready(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self.log_path}")
            try:
                if self.client.get("/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not ready in {timeout_s:g} s; see {self.log_path}")

    def run(self, fmt: str) -> float:
        started = time.perf_counter()
        for text in TEXTS:
            body = {"model": TTS_MODEL, "input": text, "voice": VOICE, "response_format": fmt}
            with self.client.stream("POST", "/v1/audio/speech", json=body) as response:
                response.raise_for_status()
                if not sum(len(chunk) for chunk in response.iter_bytes()):
                    raise RuntimeError("omniserve returned no audio")
        return time.perf_counter() - started

    def audio(self, fmt: str, text: str) -> bytes:
        body = {"model": TTS_MODEL, "input": text, "voice": VOICE, "response_format": fmt}
        response = self.client.post("/v1/audio/speech", json=body)
        response.raise_for_status()
        return response.content

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


def mp3_snr_db(mp3: bytes, pcm: bytes, max_lag: int = 2400) -> float:
    """Decoded mp3 against the 16-bit pcm of the same audio, aligned on the best lag (an mp3
    decoder may keep some of the encoder's delay), in dB."""
    import io

    import av
    import numpy as np

    reference = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768
    with av.open(io.BytesIO(mp3)) as container:
        decoded = np.concatenate([frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)])
    decoded = decoded.astype(np.float64)

    def error(lag: int) -> float:
        n = min(len(reference), len(decoded) - lag)
        return float(np.sum((reference[:n] - decoded[lag : lag + n]) ** 2)) if n > 0 else float("inf")

    lag = min(range(max_lag), key=error)
    n = min(len(reference), len(decoded) - lag)
    return 10 * float(np.log10(np.sum(reference[:n] ** 2) / error(lag)))


def spread(elapsed: list[float]) -> str:
    """Worst and median chars/s over the rounds."""
    return f"{CHARS / max(elapsed):.1f}..{CHARS / statistics.median(elapsed):.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--formats", default="pcm,mp3")
    args = parser.parse_args()
    formats = args.formats.split(",")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="omniserve-tts-bench-") as tmp:
        work = Path(tmp)
        build_tts_demo_models(work / "models")
        server = Omniserve(work / "models", work)
        try:
            direct = Direct(work / "models" / TTS_MODEL)
            server.wait_ready()
            direct.run()  # warm-up passes, not counted
            for fmt in formats:
                server.run(fmt)
            times: dict[str, list[float]] = {"direct": [], **{fmt: [] for fmt in formats}}
            for round_ in range(args.rounds):
                # Alternate who goes first, so drift on the machine does not favour one side.
                sides = ["direct", *formats] if round_ % 2 == 0 else [*formats, "direct"]
                for side in sides:
                    elapsed = direct.run() if side == "direct" else server.run(side)
                    times[side].append(elapsed)
                    print(f"  round {round_ + 1} {side:>6}: {CHARS / elapsed:7.1f} chars/s{load()}", flush=True)
            snr = mp3_snr_db(server.audio("mp3", TEXTS[0]), server.audio("pcm", TEXTS[0])) if "mp3" in formats else None
        finally:
            server.stop()
    best = {side: CHARS / min(elapsed) for side, elapsed in times.items()}
    print(f"\n{len(TEXTS)} texts, {CHARS} characters, best of {args.rounds} rounds (spread: worst..median)")
    print(f"  Coqui directly         {best['direct']:7.1f} chars/s   {spread(times['direct'])}")
    for fmt in formats:
        ratio = best[fmt] / best["direct"]
        print(f"  omniserve ({fmt:>4})      {best[fmt]:7.1f} chars/s   ratio {ratio:.3f}   {spread(times[fmt])}")
    ratio = best[formats[0]] / best["direct"]
    verdict = "meets" if ratio >= GOAL_RATIO else "misses"
    print(f"  {verdict} the goal: omniserve ({formats[0]}) within {100 * (1 - GOAL_RATIO):.0f}% of direct")
    if "mp3" in best and "pcm" in best:
        mp3_ratio = best["mp3"] / best["pcm"]
        verdict = "meets" if mp3_ratio >= MP3_GOAL_RATIO else "misses"
        # Within a round the two formats run back to back, so their ratio drifts less with the load.
        paired = sorted(pcm / mp3 for pcm, mp3 in zip(times["pcm"], times["mp3"], strict=True))
        print(
            f"  mp3/pcm {mp3_ratio:.3f}: {verdict} the goal of {MP3_GOAL_RATIO}; per round "
            f"{paired[0]:.3f}..{statistics.median(paired):.3f}..{paired[-1]:.3f} (min..median..max)"
        )
    if snr is not None:
        print(f"  mp3 quality: {snr:.1f} dB signal-to-noise against pcm of the same text")
    return 0


if __name__ == "__main__":
    sys.exit(main())
