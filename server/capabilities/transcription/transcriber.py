"""Speech to text on the faster-whisper engines: transcriptions and translations.

OpenAI's API is the one family that offers it, so the capability takes its requests as they
are (as the text capability does) and names refused fields as OpenAI does; only the engine's
own field names differ, and `OPENAI_NAMES` maps those. Every check that can refuse a request
runs before it takes a slot, the upload's decoding included, so a request that will be refused
never queues.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from engines.audio.decoding import SAMPLE_RATE, decode_upload
from engines.audio.languages import language_code
from engines.base import TranscriptionEngine, TranscriptionJob, TranscriptionTask
from engines.errors import EngineError, EngineFailure
from engines.scheduler import Scheduler
from engines.workpools import WorkPool, run_in
from schemas.errors import ApiError, ErrorCode
from schemas.openai.transcriptions import (
    TranscriptionRequest,
    TranscriptTextDelta,
    TranscriptTextDone,
    TranslationRequest,
)
from server.accounts import UNMETERED, Charge, Meter
from server.capabilities.calls import WireNames, catalog_engine, engine_call, resident_engine
from server.capabilities.transcription.rendering import RenderedTranscript, render
from server.errors import bad_request, engine_api_error
from server.settings import AudioSettings
from server.sse import guarded_events, sse_event

log = logging.getLogger("omniserve.transcriptions")

STREAMABLE_FORMATS = ("json", "text")
# The job's fields as OpenAI names them: the engine's `audio` is the uploaded `file`.
OPENAI_NAMES = WireNames({"audio": "file"})


def _operation(task: TranscriptionTask) -> str:
    return "translation" if task is TranscriptionTask.TRANSLATE else "transcription"


class Transcriber:
    def __init__(self, scheduler: Scheduler, audio: AudioSettings) -> None:
        self.scheduler = scheduler
        self.audio = audio

    async def create(
        self, request: TranslationRequest, task: TranscriptionTask, meter: Meter = UNMETERED
    ) -> RenderedTranscript:
        job = await self._prepare(request, task)
        charge = meter.transcription(job.audio.size / SAMPLE_RATE)
        call = engine_call(
            self.scheduler, request.model, TranscriptionEngine, _operation(task), names=OPENAI_NAMES, charge=charge
        )
        async with call as (engine, record):
            result = await engine.transcribe(job)
            record.produced(audio_seconds=result.duration)
            charge.add(charge.most)
        return render(result, request, task)

    async def stream(self, request: TranscriptionRequest, meter: Meter = UNMETERED) -> AsyncIterator[bytes]:
        """SSE bytes: text deltas as segments are decoded, then the whole text. Errors found
        before the first byte raise here; errors after it go out as a final ``data:`` event
        (no ``[DONE]``: OpenAI's transcription stream ends with its done event)."""
        job = await self._prepare(request, TranscriptionTask.TRANSCRIBE)
        self.scheduler.check_admission(request.model)
        # Reserved for the whole input before the first byte (a short balance is a plain 400);
        # a client that leaves pays for the seconds decoded.
        charge = meter.transcription(job.audio.size / SAMPLE_RATE)
        return guarded_events(self._events(request.model, job, charge), done=None)

    async def _events(self, model: str, job: TranscriptionJob, charge: Charge) -> AsyncIterator[bytes]:
        deltas: list[str] = []
        call = engine_call(
            self.scheduler, model, TranscriptionEngine, "transcription", names=OPENAI_NAMES, charge=charge
        )
        async with call as (engine, record):
            try:
                async for segment in engine.transcribe_stream(job):
                    record.produced(audio_seconds=max(0.0, segment.end - record.audio_seconds))
                    charge.add(max(0.0, segment.end - charge.units))
                    # Joined, the deltas are the final text: only the first loses its leading space.
                    delta = segment.text if deltas else segment.text.lstrip()
                    if delta:
                        deltas.append(delta)
                        yield sse_event(TranscriptTextDelta(delta=delta))
            except EngineError:
                raise
            except Exception as exc:
                # The Whisper engine raises its runtime's own errors; in a stream that has begun,
                # the client learns that the engine failed (ENGINE_ERROR), never the cause.
                log.exception("transcription stream of %s failed", model)
                raise EngineFailure(model) from exc
            charge.add(charge.most - charge.units)
        yield sse_event(TranscriptTextDone(text="".join(deltas).strip()))

    async def _prepare(self, request: TranslationRequest, task: TranscriptionTask) -> TranscriptionJob:
        """Every check that can refuse the request, cheapest first; then the decoded job."""
        # The kind from the catalog, before anything loads.
        catalog_engine(self.scheduler, request.model, TranscriptionEngine, OPENAI_NAMES)
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
        engine = await resident_engine(self.scheduler, request.model, TranscriptionEngine, OPENAI_NAMES)
        languages = engine.languages()
        language = (
            self._language(transcription.language, languages) if transcription and transcription.language else None
        )
        if task is TranscriptionTask.TRANSLATE and len(languages) == 1:
            raise bad_request(f"The model '{request.model}' is English-only and cannot translate.", "model")
        try:
            samples = await run_in(
                WorkPool.MEDIA, decode_upload, request.file, max_duration_s=self.audio.max_duration_s
            )
        except EngineError as exc:
            raise engine_api_error(exc, OPENAI_NAMES) from None
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
