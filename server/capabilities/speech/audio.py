"""Synthesized samples to the bytes of an audio format, chunk by chunk as they are produced.

Every format leaves at OpenAI's 24 kHz mono: pcm must (its readers assume 24 kHz 16-bit
little-endian), and one rate for all keeps the formats interchangeable. mp3, opus (in Ogg), aac
(ADTS frames) and flac are encoded with PyAV, which also resamples; wav and pcm are 16-bit PCM
written here. A streamed wav declares an unknown length (0xFFFFFFFF), as streaming servers do;
a stored one gets its exact sizes.
"""

from __future__ import annotations

import struct
from typing import Any

OUTPUT_RATE = 24_000
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
MEDIA_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
# format -> (container, codec, bit rate or 0 for lossless)
_CODECS = {
    "mp3": ("mp3", "libmp3lame", 64_000),
    "opus": ("ogg", "libopus", 32_000),
    "aac": ("adts", "aac", 64_000),
    "flac": ("flac", "flac", 0),
}
# Ogg writes a page per second of audio by default; a page per 100 ms lets opus stream.
_CONTAINER_OPTIONS = {"ogg": {"page_duration": "100000"}}
# LAME's default algorithm quality (3) spends more CPU than speaking the text does; 7 halves the
# encoding time at the same bit rate, and at 64 kbit/s speech it measured the same signal-to-noise.
# It is LAME's fastest: 8 and 9 write the same bytes, and a lower bit rate or cutoff saves no time.
# Measured on the demo VITS' 60 s of speech (8 texts): 0.27-0.29 s at quality 7, the same with
# s16p or fltp input or VBR (-V2..-V6), about 0.5 s at quality 5; 16 kHz output saves under 20%
# at the cost of the band above 8 kHz. So mp3 stays CBR 64k at quality 7.
_CODEC_OPTIONS = {"libmp3lame": {"compression_level": "7"}}
_UNKNOWN_LENGTH = 0xFFFFFFFF


def wav_header(data_bytes: int, rate: int = OUTPUT_RATE) -> bytes:
    """A 16-bit mono PCM RIFF header; `data_bytes` 0xFFFFFFFF for a stream of unknown length."""
    riff = _UNKNOWN_LENGTH if data_bytes == _UNKNOWN_LENGTH else data_bytes + 36
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", data_bytes)


class _Sink:
    """Where PyAV writes: collects bytes until they are taken. No seek, so muxers write as they go."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def write(self, data: bytes) -> int:
        self.buffer += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


class AudioEncoder:
    """Encodes mono float32 chunks into one `fmt` stream. Blocking (PyAV): use from a worker thread.

    `gain` scales the samples (clipped to [-1, 1]); `streaming` False writes a wav with exact sizes.
    """

    def __init__(self, fmt: str, *, gain: float = 1.0, streaming: bool = True) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown audio format {fmt!r}")
        self.fmt = fmt
        self.gain = gain
        self.streaming = streaming
        self._sink = _Sink()
        self._container: Any = None
        self._stream: Any = None
        self._resampler: Any = None  # wav/pcm: to 16-bit at OUTPUT_RATE
        self._pcm = bytearray()  # a stored wav's data, held until its size is known
        self._started = False

    def _frame(self, samples: Any, rate: int) -> Any:
        import av
        import numpy as np

        samples = np.asarray(samples, dtype=np.float32)
        if self.gain != 1.0:
            samples = np.clip(samples * self.gain, -1.0, 1.0)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None, :]), format="flt", layout="mono")
        frame.sample_rate = rate
        return frame

    def _start(self) -> bytes:
        import av

        self._started = True
        if self.fmt in ("wav", "pcm"):
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=OUTPUT_RATE)
            return wav_header(_UNKNOWN_LENGTH) if self.fmt == "wav" and self.streaming else b""
        container, codec, bit_rate = _CODECS[self.fmt]
        self._container = av.open(self._sink, mode="w", format=container, options=_CONTAINER_OPTIONS.get(container, {}))
        self._stream = self._container.add_stream(
            codec, rate=OUTPUT_RATE, layout="mono", options=_CODEC_OPTIONS.get(codec, {})
        )
        if bit_rate:
            self._stream.bit_rate = bit_rate
        return b""

    def _pcm_bytes(self, frame: Any) -> bytes:
        return b"".join(out.to_ndarray().astype("<i2", copy=False).tobytes() for out in self._resampler.resample(frame))

    def write(self, samples: Any, rate: int) -> bytes:
        """Encode one chunk; returns the bytes ready so far (possibly none)."""
        head = b"" if self._started else self._start()
        if len(samples) == 0:
            return head
        frame = self._frame(samples, rate)
        if self._resampler is not None:
            return head + self._emit_pcm(self._pcm_bytes(frame))
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return head + self._sink.take()

    def close(self) -> bytes:
        """Flush the encoder; returns the last bytes (for a stored wav, the whole file)."""
        head = b"" if self._started else self._start()
        if self._resampler is not None:
            tail = self._emit_pcm(self._pcm_bytes(None))
            if self.fmt == "wav" and not self.streaming:
                return wav_header(len(self._pcm)) + bytes(self._pcm)
            return head + tail
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return head + self._sink.take()

    def _emit_pcm(self, data: bytes) -> bytes:
        if self.fmt == "wav" and not self.streaming:
            self._pcm += data
            return b""
        return data


def encode_audio(samples: Any, rate: int, fmt: str, *, gain: float = 1.0) -> bytes:
    """A whole clip as one file of `fmt`. Blocking."""
    encoder = AudioEncoder(fmt, gain=gain, streaming=False)
    return encoder.write(samples, rate) + encoder.close()
