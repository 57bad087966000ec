"""Uploaded audio to the samples Whisper reads: 16 kHz mono float32, or a 400 naming the file.

PyAV (FFmpeg) decodes every container clients send (wav, mp3, flac, ogg, m4a, webm, ...)
through faster-whisper's own `decode_audio`, so the server and faster-whisper see the same
samples. The container header is read first: an upload whose declared length is over the
limit is refused before a single frame is decoded. Formats without a declared length are
checked again on the decoded samples.
"""

from __future__ import annotations

import io
from typing import Any

from schemas.errors import ApiError, ErrorCode

SAMPLE_RATE = 16000  # what every Whisper model's feature extractor expects


def _invalid(message: str, param: str) -> ApiError:
    return ApiError(ErrorCode.INVALID_AUDIO_FILE, message, param=param)


def _too_long(seconds: float, max_duration_s: float, param: str) -> ApiError:
    return _invalid(f"{param} is {seconds:.1f} s long; at most {max_duration_s:g} s of audio are accepted.", param)


def declared_duration(data: bytes, param: str = "file") -> float | None:
    """The length the container declares, in seconds (None when it declares none).

    Raises a 400 when the bytes are no media file FFmpeg knows, or hold no audio stream.
    """
    import av

    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise _invalid(f"{param} holds no audio stream.", param)
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return container.duration / av.time_base
            return None
    except (av.error.FFmpegError, ValueError, IndexError, EOFError, OSError):
        raise _invalid(
            f"{param} is not a readable audio file (supported: wav, mp3, flac, ogg, m4a, webm and other "
            "formats FFmpeg decodes).",
            param,
        ) from None


def decode_upload(data: bytes, *, max_duration_s: float, param: str = "file") -> Any:
    """The audio as a float32 numpy array of 16 kHz mono samples. Blocking: run it in a thread."""
    import av
    from faster_whisper import decode_audio

    if not data:
        raise _invalid(f"{param} is empty.", param)
    declared = declared_duration(data, param)
    if declared is not None and declared > max_duration_s:
        raise _too_long(declared, max_duration_s, param)
    try:
        samples = decode_audio(io.BytesIO(data), sampling_rate=SAMPLE_RATE)
    except (av.error.FFmpegError, ValueError, IndexError, EOFError, OSError):
        raise _invalid(f"{param} is a damaged audio file: its frames could not be decoded.", param) from None
    if samples.size == 0:
        raise _invalid(f"{param} holds no audio samples.", param)
    seconds = samples.size / SAMPLE_RATE
    if seconds > max_duration_s:
        raise _too_long(seconds, max_duration_s, param)
    return samples
