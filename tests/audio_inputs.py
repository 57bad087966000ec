"""Audio for the speech-to-text tests: espeak-ng speech, tones, other containers, word error rate."""

from __future__ import annotations

import io
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

# Sentences Whisper base transcribes from espeak-ng's voice word for word (checked by hand).
SENTENCE = "Hello, my name is Alice and I live in a small house near the sea."
SECOND_SENTENCE = "Please send me the report before the meeting on Monday morning."

# container -> (PyAV format name, codec): what clients upload, each encoded by FFmpeg.
CONTAINERS = {
    "mp3": ("mp3", "libmp3lame"),
    "flac": ("flac", "flac"),
    "ogg": ("ogg", "libopus"),
    "m4a": ("ipod", "aac"),
    "webm": ("webm", "libopus"),
}


def espeak(text: str, *, voice: str = "en", words_per_minute: int = 150) -> bytes:
    """``text`` spoken by espeak-ng, as WAV bytes (22.05 kHz mono)."""
    if shutil.which("espeak-ng") is None:
        # scripts/test.sh installs it; a missing tool must not pass for a tested feature.
        pytest.fail("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "speech.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", str(out), text],
            check=True,
            capture_output=True,
            timeout=60,
        )
        return out.read_bytes()


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    return samples, rate


def wav(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def tone(seconds: float, rate: int = 16000, frequency: float = 440.0) -> bytes:
    """A quiet sine tone as WAV bytes: valid audio of an exact length, without speech."""
    t = np.arange(int(seconds * rate)) / rate
    return wav((0.1 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), rate)


def silence(seconds: float, rate: int) -> np.ndarray:
    return np.zeros(int(seconds * rate), dtype=np.float32)


def encode(wav_bytes: bytes, container: str, *, bit_rate: int | None = None) -> bytes:
    """The WAV re-encoded into ``container`` (a key of CONTAINERS) with PyAV."""
    import av

    samples, rate = read_wav(wav_bytes)
    format_name, codec = CONTAINERS[container]
    out_rate = 48000 if codec == "libopus" else rate  # Opus runs at 48 kHz only
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=format_name) as output:
        stream = output.add_stream(codec, rate=out_rate, layout="mono")
        if bit_rate is not None:
            stream.bit_rate = bit_rate
        resampler = av.AudioResampler(format=stream.format, layout="mono", rate=out_rate)
        frame = av.AudioFrame.from_ndarray((samples * 32767).astype(np.int16)[None, :], format="s16", layout="mono")
        frame.sample_rate = rate
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(converted):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return buffer.getvalue()


def _without_id3(mp3: bytes) -> bytes:
    if mp3[:3] != b"ID3":
        return mp3
    size = (mp3[6] << 21) | (mp3[7] << 14) | (mp3[8] << 7) | mp3[9]  # syncsafe integer
    return mp3[10 + size :]


def _first_audio_frame(mp3: bytes) -> int:
    """Where the first audio frame starts: FFmpeg reads the Xing/Info frame as the header."""
    import av

    with av.open(io.BytesIO(mp3), format="mp3") as container:
        packet = next(container.demux(audio=0))
        return int(packet.pos)


def lying_mp3(
    declared_s: float, actual_s: float, *, chunk_s: float | None = None, bit_rate: int | None = None
) -> bytes:
    """An MP3 whose Info header counts ``declared_s`` of frames, followed by ``actual_s`` of
    frames it does not count: FFmpeg reports the declared length and decodes all of it. The
    header's byte count is set to the whole file's, so FFmpeg finds no mismatch to warn of.
    ``chunk_s``: the held frames are one encoded chunk of that length, repeated (fast to make
    for long files)."""
    header = _without_id3(encode(tone(declared_s), "mp3", bit_rate=bit_rate))
    piece = chunk_s if chunk_s is not None else actual_s
    body = _without_id3(encode(tone(piece), "mp3", bit_rate=bit_rate))
    body = body[_first_audio_frame(body) :] * max(1, round(actual_s / piece))
    lying = bytearray(header + body)
    tag = lying.find(b"Info")
    flags = struct.unpack_from(">I", lying, tag + 4)[0]
    assert flags & 0x3 == 0x3, "the Info header should count frames and bytes"
    struct.pack_into(">I", lying, tag + 12, len(lying))
    return bytes(lying)


def words(text: str) -> list[str]:
    """Lower-case words without punctuation: how the word error rate compares texts."""
    return re.findall(r"[a-z0-9']+", text.lower())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, by edit distance over words."""
    ref, hyp = words(reference), words(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, start=1):
        current = [i]
        for j, hyp_word in enumerate(hyp, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word)))
        previous = current
    return previous[-1] / max(1, len(ref))
