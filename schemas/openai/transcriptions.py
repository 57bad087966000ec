"""POST /audio/transcriptions and /audio/translations (OpenAI's speech-to-text API)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.constraints import AudioName, TranscriptionPrompt, UnitInterval

TranscriptFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
Granularity = Literal["word", "segment"]


class TranslationRequest(msgspec.Struct, kw_only=True):
    """The multipart form of /audio/translations, with the file read into bytes.

    ``temperature``: a value is used alone, while leaving it out lets the model raise
    it step by step when a window decodes badly (Whisper's fallback). ``vad_filter`` is an
    omniserve extra (the openai SDK sends it through ``extra_body``): true skips stretches
    without speech, false decodes everything; unset, the server skips them in long audio only.
    """

    file: Annotated[bytes, msgspec.Meta(description="The audio: one file part named file.")]
    model: AudioName
    # Whisper reads at most 223 prompt tokens; the limit bounds the text before it is tokenized.
    prompt: TranscriptionPrompt | None = None
    response_format: TranscriptFormat = "json"
    temperature: UnitInterval | None = None
    vad_filter: bool | None = None


class TranscriptionRequest(TranslationRequest, kw_only=True):
    """The multipart form of /audio/transcriptions.

    ``language`` is an ISO-639-1 code ("en") or a language's English name; unset, the model
    detects it. ``timestamp_granularities`` (sent as ``timestamp_granularities[]``) needs
    ``verbose_json``. ``stream`` sends the text as server-sent events, for json and text.
    """

    language: AudioName | None = None
    # Each granularity once at most: there are two.
    timestamp_granularities: Annotated[list[Granularity], msgspec.Meta(max_length=2)] = []
    stream: bool = False


class DurationUsage(msgspec.Struct, kw_only=True, tag="duration", tag_field="type"):
    seconds: float


class Transcription(msgspec.Struct, kw_only=True, omit_defaults=True):
    """response_format=json."""

    text: str
    usage: DurationUsage | None = None


class TranscriptionWord(msgspec.Struct, kw_only=True):
    word: str
    start: float
    end: float


class TranscriptionSegment(msgspec.Struct, kw_only=True):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class TranscriptionVerbose(msgspec.Struct, kw_only=True, omit_defaults=True):
    """response_format=verbose_json. ``language`` is the language's English name ("english")."""

    task: Literal["transcribe", "translate"]
    language: str
    duration: float
    text: str
    segments: list[TranscriptionSegment] | None = None
    words: list[TranscriptionWord] | None = None
    usage: DurationUsage | None = None


class TranscriptTextDelta(msgspec.Struct, kw_only=True, tag="transcript.text.delta", tag_field="type"):
    """A streamed piece of the text; the pieces joined are the final text."""

    delta: str


class TranscriptTextDone(msgspec.Struct, kw_only=True, tag="transcript.text.done", tag_field="type"):
    text: str
