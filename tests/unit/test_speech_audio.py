"""The speech encoders: every format decodes as itself, at 24 kHz, with the length it was given."""

from __future__ import annotations

import io
import struct

import av
import numpy as np
import pytest
import soundfile

from server.capabilities.speech.audio import OUTPUT_RATE, AudioEncoder, encode_audio

RATE = 22_050


def tone(seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def decoded(data: bytes) -> tuple[str, str, float]:
    """Container, codec and duration in seconds, as PyAV reads them."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return container.format.name, stream.codec_context.name, samples / stream.rate


@pytest.mark.parametrize(
    ("fmt", "container", "codec"),
    [("mp3", "mp3", "mp3float"), ("opus", "ogg", "opus"), ("aac", "aac", "aac"), ("flac", "flac", "flac")],
)
def test_streamed_chunks_join_into_one_decodable_file(fmt: str, container: str, codec: str) -> None:
    encoder = AudioEncoder(fmt)
    chunks = [encoder.write(tone(0.5), RATE) for _ in range(4)]
    chunks.append(encoder.close())
    # Bytes leave before the end: the body can stream.
    assert sum(len(chunk) for chunk in chunks[:-1]) > 0
    name, codec_name, seconds = decoded(b"".join(chunks))
    assert (name, codec_name) == (container, codec)
    assert seconds == pytest.approx(2.0, abs=0.1)  # codecs pad a frame or two


def test_streamed_wav_declares_an_unknown_length_and_still_reads() -> None:
    encoder = AudioEncoder("wav")
    data = encoder.write(tone(1.0), RATE) + encoder.close()
    assert data[:4] == b"RIFF" and struct.unpack("<I", data[40:44])[0] == 0xFFFFFFFF
    samples, rate = soundfile.read(io.BytesIO(data))
    assert rate == OUTPUT_RATE
    assert len(samples) / rate == pytest.approx(1.0, abs=0.01)


def test_stored_wav_has_exact_sizes() -> None:
    data = encode_audio(tone(1.0), RATE, "wav")
    assert struct.unpack("<I", data[40:44])[0] == len(data) - 44
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    info = soundfile.info(io.BytesIO(data))
    assert (info.samplerate, info.channels, info.subtype) == (OUTPUT_RATE, 1, "PCM_16")


def test_pcm_is_raw_16_bit_at_24_khz() -> None:
    data = encode_audio(tone(1.0), RATE, "pcm")
    assert len(data) == pytest.approx(2 * OUTPUT_RATE, abs=64)
    pcm = np.frombuffer(data, dtype="<i2")
    assert 0.45 * 32767 < np.abs(pcm).max() <= 0.5 * 32767 + 64


def test_gain_scales_and_clips() -> None:
    quiet = np.frombuffer(encode_audio(tone(0.2, 0.4), RATE, "pcm"), dtype="<i2")
    louder = np.frombuffer(encode_audio(tone(0.2, 0.4), RATE, "pcm", gain=1.5), dtype="<i2")
    clipped = np.frombuffer(encode_audio(tone(0.2, 0.9), RATE, "pcm", gain=2.0), dtype="<i2")
    assert np.abs(louder).max() == pytest.approx(1.5 * np.abs(quiet).max(), rel=0.02)
    assert np.abs(clipped).max() >= 32700


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="ogg"):
        AudioEncoder("ogg")
