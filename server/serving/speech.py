"""POST /audio/speech on the speech engines, and the checks /v3 txt2speech shares with it.

The body streams as it is produced: each sentence is encoded and sent as soon as the engine
has spoken it. Everything that can be refused is checked before the first byte (a clear 400 or
404 instead of a broken 200), and so is the first sentence itself: the response starts only once
there is audio to send, so an engine failure there is still a normal error response.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import NamedTuple, cast

from engines.base import ModelKind, SpeechAudio, SpeechEngine, SpeechJob
from engines.scheduler import Scheduler
from schemas.openai.speech import SpeechRequest
from server.accounts import UNMETERED, Meter
from server.serving.common import bad_request, require_kind
from server.serving.speech_audio import MEDIA_TYPES, AudioEncoder
from server.settings import AudioSettings
from server.telemetry.genai import inference


class SpeechStream(NamedTuple):
    media_type: str
    chunks: AsyncIterator[bytes]


def _listed(names: list[str], limit: int = 24) -> str:
    shown = ", ".join(names[:limit])
    return shown + (", ..." if len(names) > limit else "")


def check_voice(engine: SpeechEngine, voice: str, param: str) -> None:
    if voice not in engine.voices():
        message = f"Unknown voice '{voice}' for model '{engine.spec.name}'; available: {_listed(engine.voices())}."
        raise bad_request(message, param)


def check_language(engine: SpeechEngine, language: str, param: str) -> None:
    if not engine.accepts_language(language):
        languages = ", ".join(engine.languages())
        message = f"Language '{language}' is not spoken by model '{engine.spec.name}'; it speaks: {languages}."
        raise bad_request(message, param)


def check_text(engine: SpeechEngine, text: str, param: str, language: str | None = None) -> None:
    if not text.strip():
        raise bad_request(f"{param} must not be empty.", param)
    if not engine.can_speak(text, language):
        raise bad_request(f"{param} holds no characters that model '{engine.spec.name}' can speak.", param)


async def speech_engine(scheduler: Scheduler, model: str) -> SpeechEngine:
    """The loaded speech engine for `model`: 404 for an unknown name, 400 for another kind."""
    engine = scheduler.engine(model)
    require_kind(model, ModelKind.SPEECH, engine.spec.kind, "speech")
    # Voices and languages come from the model's files: it must be loaded to check them.
    return cast(SpeechEngine, await scheduler.resident_engine(model))


async def _prepend(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    try:
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        # Closing the inner generator releases its lease even when the client left mid-stream.
        await rest.aclose()


async def _next_sentence(sentences: AsyncIterator[SpeechAudio]) -> SpeechAudio | None:
    return await anext(sentences, None)


async def _spoken_ahead(sentences: AsyncIterator[SpeechAudio]) -> AsyncGenerator[SpeechAudio, None]:
    """The engine's sentences, the next one already being spoken while the caller handles the last.

    One sentence ahead at most, so a caller that goes away stops the work a sentence later.
    """
    ahead = asyncio.create_task(_next_sentence(sentences))
    try:
        while (audio := await ahead) is not None:
            ahead = asyncio.create_task(_next_sentence(sentences))
            yield audio
    finally:
        if not ahead.done():
            ahead.cancel()
            await asyncio.wait([ahead])  # a generator cannot be closed while it runs
        close = getattr(sentences, "aclose", None)
        if close is not None:
            await close()


class SpeechService:
    def __init__(self, scheduler: Scheduler, settings: AudioSettings) -> None:
        self.scheduler = scheduler
        self.max_chars = settings.max_speech_chars

    async def _job(self, request: SpeechRequest) -> SpeechJob:
        if len(request.input) > self.max_chars:
            raise bad_request(
                f"input is {len(request.input)} characters; at most {self.max_chars} are accepted.", "input"
            )
        if request.stream_format != "audio":
            raise bad_request(
                "stream_format 'sse' is not supported; the audio bytes stream as they are made.", "stream_format"
            )
        engine = await speech_engine(self.scheduler, request.model)
        check_voice(engine, request.voice_name, "voice")
        check_text(engine, request.input, "input")
        return SpeechJob(text=request.input, voice=request.voice_name, speed=request.speed)

    async def stream(self, request: SpeechRequest, meter: Meter = UNMETERED) -> SpeechStream:
        """The audio as it is produced. Raises before the first byte on anything refused."""
        job = await self._job(request)
        self.scheduler.check_admission(request.model)
        chunks = self._encoded(request.model, job, request.response_format, meter)
        try:
            first = await anext(chunks)
        except BaseException:
            await chunks.aclose()
            raise
        return SpeechStream(MEDIA_TYPES[request.response_format], _prepend(first, chunks))

    async def _encoded(
        self, model: str, job: SpeechJob, fmt: str, meter: Meter = UNMETERED
    ) -> AsyncGenerator[bytes, None]:
        encoder = AudioEncoder(fmt)
        # Reserved from the text before the first byte, settled to the seconds spoken.
        charge = meter.speech(job.text, job.speed)
        async with (
            charge,
            inference("speech", model) as call,
            self.scheduler.lease(model) as leased,
            aclosing(_spoken_ahead(cast(SpeechEngine, leased).stream(job))) as sentences,
        ):
            async for audio in sentences:
                call.produced(audio_seconds=len(audio.samples) / audio.sample_rate)
                charge.add(len(audio.samples) / audio.sample_rate)
                # Encoding takes milliseconds per second of audio: off the event loop, and while
                # the engine speaks the next sentence.
                data = await asyncio.to_thread(encoder.write, audio.samples, audio.sample_rate)
                if data:
                    yield data
        yield await asyncio.to_thread(encoder.close)
