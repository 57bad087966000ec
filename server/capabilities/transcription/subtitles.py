"""Transcript segments as SubRip (srt) and WebVTT subtitles, the way OpenAI's API writes them."""

from __future__ import annotations

from collections.abc import Sequence

from engines.base import TranscribedSegment


def timestamp(seconds: float, decimal_marker: str) -> str:
    """HH:MM:SS<marker>mmm; SubRip marks milliseconds with a comma, WebVTT with a dot."""
    milliseconds = max(0, round(seconds * 1000))
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    whole_seconds, milliseconds = divmod(milliseconds, 1000)
    return f"{hours:02d}:{minutes:02d}:{whole_seconds:02d}{decimal_marker}{milliseconds:03d}"


def srt(segments: Sequence[TranscribedSegment]) -> str:
    cues = [
        f"{number}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n{s.text.strip()}\n"
        for number, s in enumerate(segments, start=1)
    ]
    return "\n".join(cues)


def vtt(segments: Sequence[TranscribedSegment]) -> str:
    cues = [f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{s.text.strip()}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(cues)
