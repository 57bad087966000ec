"""POST /audio/transcriptions and /audio/translations on the faster-whisper engines."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import cast

import msgspec

from engines.audio.decoding import SAMPLE_RATE, decode_upload
from engines.audio.languages import language_code, language_name
from engines.base import (
    ModelKind,
    TranscribedSegment,
    TranscriptionEngine,
    TranscriptionJob,
    TranscriptionResult,
    TranscriptionTask,
)
from engines.scheduler import Scheduler
from schemas.errors import ApiError, ErrorCode
from schemas.openai.transcriptions import (
    DurationUsage,
    Transcription,
    TranscriptionRequest,
    TranscriptionSegment,
    TranscriptionVerbose,
    TranscriptionWord,
    TranscriptTextDelta,
    TranscriptTextDone,
    TranslationRequest,
)
from server.accounts import UNMETERED, Charge, Meter
from server.serving.common import bad_request, require_kind, sse_error, sse_event
from server.serving.subtitles import srt, vtt
from server.settings import AudioSettings
from server.telemetry.genai import inference

log = logging.getLogger("omniserve.transcriptions")

STREAMABLE_FORMATS = ("json", "text")
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


class TranscriptionService:
    def __init__(self, scheduler: Scheduler, audio: AudioSettings) -> None:
        self.scheduler = scheduler
        self.audio = audio

    async def create(
        self, request: TranslationRequest, task: TranscriptionTask, meter: Meter = UNMETERED
    ) -> RenderedTranscript:
        job = await self._prepare(request, task)
        operation = "translation" if task is TranscriptionTask.TRANSLATE else "transcription"
        charge = meter.transcription(job.audio.size / SAMPLE_RATE)
        async with charge, inference(operation, request.model) as call, self.scheduler.lease(request.model) as engine:
            result = await cast(TranscriptionEngine, engine).transcribe(job)
            call.produced(audio_seconds=result.duration)
            charge.add(charge.most)
        return render(result, request, task)

    async def stream(self, request: TranscriptionRequest, meter: Meter = UNMETERED) -> AsyncIterator[bytes]:
        """SSE bytes: text deltas as segments are decoded, then the whole text. Errors found
        before the first byte raise here; errors after it go out as a final ``data:`` event."""
        job = await self._prepare(request, TranscriptionTask.TRANSCRIBE)
        self.scheduler.check_admission(request.model)
        # Reserved for the whole input before the first byte (a short balance is a plain 400);
        # a client that leaves pays for the seconds decoded.
        charge = meter.transcription(job.audio.size / SAMPLE_RATE)
        return self._events(request.model, job, charge)

    async def _events(self, model: str, job: TranscriptionJob, charge: Charge) -> AsyncIterator[bytes]:
        deltas: list[str] = []
        try:
            async with charge, inference("transcription", model) as call, self.scheduler.lease(model) as engine:
                async for segment in cast(TranscriptionEngine, engine).transcribe_stream(job):
                    call.produced(audio_seconds=max(0.0, segment.end - call.audio_seconds))
                    charge.add(max(0.0, segment.end - charge.units))
                    # Joined, the deltas are the final text: only the first loses its leading space.
                    delta = segment.text if deltas else segment.text.lstrip()
                    if delta:
                        deltas.append(delta)
                        yield sse_event(TranscriptTextDelta(delta=delta))
                charge.add(charge.most - charge.units)
            yield sse_event(TranscriptTextDone(text="".join(deltas).strip()))
        except ApiError as error:
            yield sse_error(error)
        except Exception:
            log.exception("transcription stream of %s failed", model)
            yield sse_error(ApiError(ErrorCode.ENGINE_ERROR, "The transcription failed."))

    async def _prepare(self, request: TranslationRequest, task: TranscriptionTask) -> TranscriptionJob:
        """Every check that can refuse the request, cheapest first; then the decoded job."""
        require_kind(request.model, ModelKind.TRANSCRIPTION, self.scheduler.engine(request.model).spec.kind, "audio")
        # Translations have no language, timestamp granularities or stream.
        transcription = request if isinstance(request, TranscriptionRequest) else None
        granularities = transcription.timestamp_granularities if transcription else []
        if granularities and request.response_format != "verbose_json":
            raise bad_request("timestamp granularities need response_format 'verbose_json'.", "timestamp_granularities")
        if transcription and transcription.stream and request.response_format not in STREAMABLE_FORMATS:
            raise bad_request("Streaming sends plain text: use response_format 'json' or 'text'.", "response_format")
        if len(request.file) > self.audio.max_upload_bytes:
            raise ApiError(
                ErrorCode.REQUEST_BODY_TOO_LARGE,
                f"file is {len(request.file)} bytes; at most {self.audio.max_upload_bytes} are accepted.",
                param="file",
            )
        engine = cast(TranscriptionEngine, await self.scheduler.resident_engine(request.model))
        languages = engine.languages()
        language = (
            self._language(transcription.language, languages) if transcription and transcription.language else None
        )
        if task is TranscriptionTask.TRANSLATE and len(languages) == 1:
            raise bad_request(f"The model '{request.model}' is English-only and cannot translate.", "model")
        samples = await asyncio.to_thread(decode_upload, request.file, max_duration_s=self.audio.max_duration_s)
        return TranscriptionJob(
            audio=samples,
            task=task,
            language=language,
            prompt=request.prompt or None,
            temperature=request.temperature,
            word_timestamps="word" in granularities,
            vad_filter=request.vad_filter,
        )

    @staticmethod
    def _language(value: str, languages: list[str]) -> str:
        code = language_code(value)
        if code is None:
            raise bad_request(f"Unknown language '{value}': give an ISO-639-1 code such as 'en'.", "language")
        if code not in languages:
            raise bad_request(f"This model does not know the language '{value}'.", "language")
        return code
