"""A transcript in the response_format asked for: json, verbose_json, text, srt or vtt."""

from __future__ import annotations

import msgspec

from engines.audio.languages import language_name
from engines.base import TranscribedSegment, TranscriptionResult, TranscriptionTask
from schemas.openai.transcriptions import (
    DurationUsage,
    Transcription,
    TranscriptionSegment,
    TranscriptionVerbose,
    TranscriptionWord,
    TranslationRequest,
)
from server.capabilities.transcription.subtitles import srt, vtt

_encoder = msgspec.json.Encoder()


class RenderedTranscript(msgspec.Struct, kw_only=True):
    """The response body in the requested format, and its media type."""

    body: bytes
    media_type: str


def transcript_text(segments: list[TranscribedSegment]) -> str:
    return "".join(segment.text for segment in segments).strip()


def render(result: TranscriptionResult, request: TranslationRequest, task: TranscriptionTask) -> RenderedTranscript:
    text = transcript_text(result.segments)
    fmt = request.response_format
    if fmt == "text":
        return RenderedTranscript(body=(text + "\n").encode(), media_type="text/plain; charset=utf-8")
    if fmt in ("srt", "vtt"):
        subtitles = srt(result.segments) if fmt == "srt" else vtt(result.segments)
        return RenderedTranscript(body=subtitles.encode(), media_type="text/plain; charset=utf-8")
    usage = DurationUsage(seconds=round(result.duration, 3))
    if fmt == "json":
        return RenderedTranscript(
            body=_encoder.encode(Transcription(text=text, usage=usage)), media_type="application/json"
        )
    granularities = getattr(request, "timestamp_granularities", None) or ["segment"]
    verbose = TranscriptionVerbose(
        task=task.value,
        # A translation's text is English whatever was spoken.
        language="english" if task is TranscriptionTask.TRANSLATE else language_name(result.language),
        duration=round(result.duration, 3),
        text=text,
        usage=usage,
    )
    if "segment" in granularities:
        verbose.segments = [
            TranscriptionSegment(
                id=s.id,
                seek=s.seek,
                start=s.start,
                end=s.end,
                text=s.text,
                tokens=s.tokens,
                temperature=s.temperature,
                avg_logprob=s.avg_logprob,
                compression_ratio=s.compression_ratio,
                no_speech_prob=s.no_speech_prob,
            )
            for s in result.segments
        ]
    if "word" in granularities:
        verbose.words = [
            TranscriptionWord(word=w.word.strip(), start=w.start, end=w.end)
            for s in result.segments
            for w in s.words or []
        ]
    return RenderedTranscript(body=_encoder.encode(verbose), media_type="application/json")
