"""Speech to text on the faster-whisper engines: transcriptions and translations.

OpenAI's API is the one family that offers it, so the capability takes its requests as they
are (as the text capability does) and names refused fields as OpenAI does; only the engine's
own field names differ, and `OPENAI_NAMES` maps those.

Every check that can refuse a request from its fields runs before it queues, and so does a
probe of the upload's container: a file FFmpeg cannot read, or one that declares itself too
long, is refused at once. The upload is decoded only once the request holds its lease, so a
queue of requests holds their encoded uploads (each at most `audio.max_upload_bytes`), not
their samples; the decoding enforces the duration limit on the samples themselves, whatever
the container declared (engines/audio/decoding.py). A stream takes its lease and decodes its
upload before its first byte, so overload and a refused file are error responses with their
own status, not events after a 200.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import msgspec

from engines.audio.decoding import SAMPLE_RATE, check_declared, decode_upload
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
from server.capabilities.started_streams import READY, started_stream
from server.capabilities.transcription.rendering import RenderedTranscript, render
from server.errors import bad_request, engine_api_error
from server.settings import AudioSettings
from server.sse import guarded_events, sse_event
from server.telemetry.genai import Inference

log = logging.getLogger("omniserve.transcriptions")

STREAMABLE_FORMATS = ("json", "text")
# The job's fields as OpenAI names them: the engine's `audio` is the uploaded `file`.
OPENAI_NAMES = WireNames({"audio": "file"})


def _operation(task: TranscriptionTask) -> str:
    return "translation" if task is TranscriptionTask.TRANSLATE else "transcription"


class _Upload(NamedTuple):
    """A request that passed every check before the queue; its job's audio is still the upload."""

    job: TranscriptionJob
    declared_s: float | None  # the length the container declares, if it declares one


class _Billing:
    """The input's seconds, billed over two charges: the first reserved before the wait, for
    the length the container declares; the second, once the audio is decoded, for whatever
    it holds beyond that (all of it when the container declares no length)."""

    def __init__(self, declared: Charge, rest: Charge) -> None:
        self.charges = (declared, rest)

    def reach(self, seconds: float) -> None:
        """Bill the input up to ``seconds`` in all (never less than billed before)."""
        for charge in self.charges:
            part = min(charge.most, max(seconds, 0.0))
            if part > charge.units:
                charge.add(part - charge.units)
            seconds -= charge.most


class _Leased(NamedTuple):
    engine: TranscriptionEngine
    record: Inference
    job: TranscriptionJob  # with the decoded samples
    seconds: float  # the audio's length, decoded
    billing: _Billing


class Transcriber:
    def __init__(self, scheduler: Scheduler, audio: AudioSettings) -> None:
        self.scheduler = scheduler
        self.audio = audio

    async def create(
        self, request: TranslationRequest, task: TranscriptionTask, meter: Meter = UNMETERED
    ) -> RenderedTranscript:
        upload = await self._prepare(request, task)
        async with self._leased(request.model, upload, task, meter) as leased:
            result = await leased.engine.transcribe(leased.job)
            leased.record.produced(audio_seconds=result.duration)
            leased.billing.reach(leased.seconds)
        return render(result, request, task)

    async def stream(self, request: TranscriptionRequest, meter: Meter = UNMETERED) -> AsyncIterator[bytes]:
        """SSE bytes: text deltas as segments are decoded, then the whole text. Errors found
        before the first byte (the lease and the decoding included) raise here; errors after
        it go out as a final ``data:`` event (no ``[DONE]``: OpenAI's transcription stream
        ends with its done event)."""
        upload = await self._prepare(request, TranscriptionTask.TRANSCRIBE)
        events = await started_stream(self._events(request.model, upload, meter))
        return guarded_events(events, done=None)

    async def _events(self, model: str, upload: _Upload, meter: Meter) -> AsyncGenerator[bytes, None]:
        deltas: list[str] = []
        async with self._leased(model, upload, TranscriptionTask.TRANSCRIBE, meter) as leased:
            yield READY
            record, billing = leased.record, leased.billing
            try:
                async for segment in leased.engine.transcribe_stream(leased.job):
                    record.produced(audio_seconds=max(0.0, segment.end - record.audio_seconds))
                    # A client that leaves pays for the seconds decoded.
                    billing.reach(segment.end)
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
            billing.reach(leased.seconds)
        yield sse_event(TranscriptTextDone(text="".join(deltas).strip()))

    @asynccontextmanager
    async def _leased(
        self, model: str, upload: _Upload, task: TranscriptionTask, meter: Meter
    ) -> AsyncIterator[_Leased]:
        """The engine leased and the upload decoded, with the input's charges reserved."""
        limit = self.audio.max_duration_s
        # Reserved before the wait: a short balance is refused without queueing.
        declared = meter.transcription(min(upload.declared_s, limit) if upload.declared_s is not None else 0.0)
        call = engine_call(
            self.scheduler, model, TranscriptionEngine, _operation(task), names=OPENAI_NAMES, charge=declared
        )
        async with call as (engine, record):
            samples: Any = await run_in(WorkPool.MEDIA, decode_upload, upload.job.audio, max_duration_s=limit)
            seconds = samples.size / SAMPLE_RATE
            async with meter.transcription(max(0.0, seconds - declared.most)) as rest:
                job = msgspec.structs.replace(upload.job, audio=samples)
                yield _Leased(engine, record, job, seconds, _Billing(declared, rest))

    async def _prepare(self, request: TranslationRequest, task: TranscriptionTask) -> _Upload:
        """Every check that can refuse the request before it queues, cheapest first."""
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
            declared = await run_in(
                WorkPool.MEDIA, check_declared, request.file, max_duration_s=self.audio.max_duration_s
            )
        except EngineError as exc:
            raise engine_api_error(exc, OPENAI_NAMES) from None
        job = TranscriptionJob(
            audio=request.file,
            task=task,
            language=language,
            prompt=request.prompt or None,
            temperature=request.temperature,
            word_timestamps="word" in granularities,
            vad_filter=request.vad_filter,
        )
        return _Upload(job, declared)

    @staticmethod
    def _language(value: str, languages: list[str]) -> str:
        code = language_code(value)
        if code is None:
            raise bad_request(f"Unknown language '{value}': give an ISO-639-1 code such as 'en'.", "language")
        if code not in languages:
            raise bad_request(f"This model does not know the language '{value}'.", "language")
        return code
