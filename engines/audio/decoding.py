"""Uploaded audio to the samples Whisper reads: 16 kHz mono float32, or an InvalidJob (AUDIO_FILE).

PyAV (FFmpeg) decodes every container clients send (wav, mp3, flac, ogg, m4a, webm, ...)
through faster-whisper's own `decode_audio`, so the server and faster-whisper see the same
samples. The container header is read first: an upload whose declared length is over the
limit is refused before a single frame is decoded. Formats without a declared length are
checked again on the decoded samples.
"""

from __future__ import annotations

import io
from typing import Any

from engines.errors import InvalidJob, JobProblem

SAMPLE_RATE = 16000  # what every Whisper model's feature extractor expects

# The audio's field in engine terms (TranscriptionJob.audio). Messages name the audio by `label`,
# the caller's word for it; "file" (the upload's name in the transcription APIs) until callers
# pass their own.
_FIELD = "audio"
_LABEL = "file"


def _invalid(message: str) -> InvalidJob:
    return InvalidJob(message, _FIELD, JobProblem.AUDIO_FILE)


def _too_long(seconds: float, max_duration_s: float, label: str) -> InvalidJob:
    return _invalid(f"{label} is {seconds:.1f} s long; at most {max_duration_s:g} s of audio are accepted.")


def declared_duration(data: bytes, label: str = _LABEL) -> float | None:
    """The length the container declares, in seconds (None when it declares none).

    Raises InvalidJob when the bytes are no media file FFmpeg knows, or hold no audio stream.
    """
    import av

    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise _invalid(f"{label} holds no audio stream.")
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return container.duration / av.time_base
            return None
    except (av.error.FFmpegError, ValueError, IndexError, EOFError, OSError):
        raise _invalid(
            f"{label} is not a readable audio file (supported: wav, mp3, flac, ogg, m4a, webm and other "
            "formats FFmpeg decodes)."
        ) from None


def decode_upload(data: bytes, *, max_duration_s: float, label: str = _LABEL) -> Any:
    """The audio as a float32 numpy array of 16 kHz mono samples. Blocking: run it in a thread."""
    import av
    from faster_whisper import decode_audio

    if not data:
        raise _invalid(f"{label} is empty.")
    declared = declared_duration(data, label)
    if declared is not None and declared > max_duration_s:
        raise _too_long(declared, max_duration_s, label)
    try:
        samples = decode_audio(io.BytesIO(data), sampling_rate=SAMPLE_RATE)
    except (av.error.FFmpegError, ValueError, IndexError, EOFError, OSError):
        raise _invalid(f"{label} is a damaged audio file: its frames could not be decoded.") from None
    if samples.size == 0:
        raise _invalid(f"{label} holds no audio samples.")
    seconds = samples.size / SAMPLE_RATE
    if seconds > max_duration_s:
        raise _too_long(seconds, max_duration_s, label)
    return samples
