"""Uploaded audio to the samples Whisper reads: 16 kHz mono float32, or an InvalidJob (AUDIO_FILE).

PyAV (FFmpeg) decodes every container clients send (wav, mp3, flac, ogg, m4a, webm, ...), with
the conversion faster-whisper's own `decode_audio` makes (16-bit mono at 16 kHz, then float32),
so the server and faster-whisper see the same samples.

The length a container declares is only a claim: an MP3 whose header counts a few seconds of
frames may hold hours of them. So the limit is enforced while decoding: frames are decoded and
resampled one at a time into a buffer that never grows past the limit, and the first sample
beyond it ends the decoding with a refusal. The declared length serves twice before that:
`declared_duration` refuses an upload that admits to being too long without decoding a frame,
and it sizes the buffer, so an honest upload is decoded into one allocation of its own size.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from engines.errors import InvalidJob, JobProblem

SAMPLE_RATE = 16000  # what every Whisper model's feature extractor expects
# The buffer's first size when the container declares no length; it doubles from there.
_UNDECLARED_START_S = 30.0
# Slack over the declared length for the first buffer: encoders pad by a few milliseconds.
_DECLARED_SLACK_S = 1.0

# The audio's field in engine terms (TranscriptionJob.audio). Messages name the audio by `label`,
# the caller's word for it; "file" (the upload's name in the transcription APIs) until callers
# pass their own.
_FIELD = "audio"
_LABEL = "file"
_UNREADABLE = (
    "{label} is not a readable audio file (supported: wav, mp3, flac, ogg, m4a, webm and other formats FFmpeg decodes)."
)


def _invalid(message: str) -> InvalidJob:
    return InvalidJob(message, _FIELD, JobProblem.AUDIO_FILE)


def _too_long(seconds: float, max_duration_s: float, label: str) -> InvalidJob:
    return _invalid(f"{label} is {seconds:.1f} s long; at most {max_duration_s:g} s of audio are accepted.")


def _longer_than(max_duration_s: float, label: str) -> InvalidJob:
    return _invalid(f"{label} holds more than {max_duration_s:g} s of audio; at most that is accepted.")


def _ffmpeg_errors() -> tuple[type[BaseException], ...]:
    import av

    return (av.error.FFmpegError, ValueError, IndexError, EOFError, OSError)


def _declared(container: Any) -> float | None:
    stream = container.streams.audio[0]
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        import av

        return float(container.duration / av.time_base)
    return None


def _open(data: bytes, label: str) -> Any:
    """The container, with at least one audio stream; an InvalidJob otherwise."""
    import av

    if not data:
        raise _invalid(f"{label} is empty.")
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except _ffmpeg_errors():
        raise _invalid(_UNREADABLE.format(label=label)) from None
    if not container.streams.audio:
        container.close()
        raise _invalid(f"{label} holds no audio stream.")
    return container


def declared_duration(data: bytes, label: str = _LABEL) -> float | None:
    """The length the container declares, in seconds (None when it declares none): a probe of
    its header, no frame decoded. Blocking: run it on the media pool.

    Raises InvalidJob when the bytes are empty, no media file FFmpeg knows, or hold no audio stream.
    """
    try:
        with _open(data, label) as container:
            return _declared(container)
    except _ffmpeg_errors():
        raise _invalid(_UNREADABLE.format(label=label)) from None


def check_declared(data: bytes, *, max_duration_s: float, label: str = _LABEL) -> float | None:
    """`declared_duration`, refused when it is over ``max_duration_s``: the cheap refusal of an
    upload that admits to being too long. A pass proves nothing about the length decoded."""
    declared = declared_duration(data, label)
    if declared is not None and declared > max_duration_s:
        raise _too_long(declared, max_duration_s, label)
    return declared


class _Samples:
    """float32 samples appended chunk by chunk into a buffer of at most ``limit`` samples.
    It starts at ``start`` samples and doubles as needed; a chunk that would take it past
    ``limit`` raises _TooLong, before any memory for it is taken. The buffer grows and shrinks
    in place (realloc: large blocks are remapped, not copied), so the old and the new buffer
    are never held side by side."""

    def __init__(self, start: int, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.buffer = np.empty(max(1, min(start, limit)), dtype=np.float32)

    def append(self, chunk: np.ndarray) -> None:
        end = self.size + chunk.shape[0]
        if end > self.limit:
            raise _TooLong
        if end > self.buffer.shape[0]:
            self.buffer.resize(min(self.limit, max(end, 2 * self.buffer.shape[0])), refcheck=False)
        # int16 to float32 as faster-whisper converts: exact, the division is by a power of two.
        np.divide(chunk, 32768.0, out=self.buffer[self.size : end], dtype=np.float32)
        self.size = end

    def result(self) -> np.ndarray:
        self.buffer.resize(self.size, refcheck=False)
        return self.buffer


class _TooLong(Exception):
    pass


def _resample(resampler: Any, frame: Any, samples: _Samples) -> None:
    for converted in resampler.resample(frame):
        samples.append(converted.to_ndarray()[0])


def decode_upload(data: bytes, *, max_duration_s: float, label: str = _LABEL) -> Any:
    """The audio as a float32 numpy array of 16 kHz mono samples, at most ``max_duration_s``
    of them: decoding stops at the first sample past the limit (InvalidJob). Memory stays
    within the limit's worth of samples whatever the container declares. Blocking: run it on
    the media pool."""
    import av

    limit = int(max_duration_s * SAMPLE_RATE)
    try:
        with _open(data, label) as container:
            declared = _declared(container)
            if declared is not None and declared > max_duration_s:
                raise _too_long(declared, max_duration_s, label)
            start_s = declared + _DECLARED_SLACK_S if declared is not None else _UNDECLARED_START_S
            samples = _Samples(int(start_s * SAMPLE_RATE), limit)
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            stream = container.streams.audio[0]
            # Frames are resampled in runs of about a second: one resampler call per frame
            # would cost more than the decoding itself.
            fifo = av.AudioFifo()
            run = max(stream.sample_rate or SAMPLE_RATE, 1)
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    continue  # a damaged packet: skipped, as faster-whisper skips it
                for frame in frames:
                    frame.pts = None  # one run, whatever the timestamps say
                    fifo.write(frame)
                    if fifo.samples >= run:
                        _resample(resampler, fifo.read(), samples)
            if fifo.samples:
                _resample(resampler, fifo.read(), samples)
            _resample(resampler, None, samples)
    except _TooLong:
        raise _longer_than(max_duration_s, label) from None
    except _ffmpeg_errors():
        raise _invalid(f"{label} is a damaged audio file: its frames could not be decoded.") from None
    if samples.size == 0:
        raise _invalid(f"{label} holds no audio samples.")
    return samples.result()
