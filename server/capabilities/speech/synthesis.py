"""Text to speech on the speech engines, for every API family that offers it.

The capability owns the limit on characters, the checks that need the model (its voices,
languages and alphabet), the engine jobs, the engine call, metering and the encoding. The
families (OpenAI's /audio/speech, /v3 txt2speech) map their fields onto a `SpeechOrder` and
name them back through their `WireNames` when something is refused.

A stream starts only once there is audio to send: everything that can be refused is checked
before the first byte (a clear 400 or 404 instead of a broken 200), and so is the first sentence
itself, so an engine failure there is still a normal error response. Then each sentence is
encoded and sent as soon as the engine has spoken it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import NamedTuple

import msgspec

from engines.admission import Priority
from engines.base import ProgressCallback, SpeechAudio, SpeechEngine, SpeechJob
from engines.scheduler import Scheduler
from engines.workpools import WorkPool, run_in
from server.accounts import UNMETERED, Meter
from server.capabilities.calls import SAME_NAMES, WireNames, engine_call, resident_engine
from server.capabilities.speech.audio import MEDIA_TYPES, AudioEncoder, encode_audio
from server.capabilities.started_streams import started_stream
from server.settings import AudioSettings
from server.storage.local import LocalStorage
from server.tasks.models import OutputFile
from server.tasks.runner import TaskOutcome

OPERATION = "speech"


class SpeechOrder(msgspec.Struct, kw_only=True):
    """What a family asks to be spoken, in the capability's terms: these field names are the
    ones a family's `WireNames` table maps onto its own."""

    model: str
    texts: list[str]  # spoken in order: one stream (OpenAI sends one text), or one file each (/v3)
    voice: str
    language: str | None = None  # None: the model's first language
    speed: float = 1.0
    volume: float = 1.0  # a gain on the samples, clipped to [-1, 1]


class SpeechStream(NamedTuple):
    media_type: str
    chunks: AsyncIterator[bytes]


def _listed(names: list[str], limit: int = 24) -> str:
    shown = ", ".join(names[:limit])
    return shown + (", ..." if len(names) > limit else "")


class SpeechSynthesis:
    def __init__(self, scheduler: Scheduler, storage: LocalStorage, settings: AudioSettings) -> None:
        self.scheduler = scheduler
        self.storage = storage
        self.max_chars = settings.max_speech_chars

    async def check(self, order: SpeechOrder, names: WireNames = SAME_NAMES) -> SpeechEngine:
        """Refuse what the model cannot speak; the wire schemas have checked every fixed range.
        Loads the model: its voices and languages come from its files."""
        total = sum(len(text) for text in order.texts)
        if total > self.max_chars:
            message = f"{names('texts')} holds {total} characters; at most {self.max_chars} are accepted."
            raise names.invalid("texts", message)
        engine = await resident_engine(self.scheduler, order.model, SpeechEngine, names)
        model = engine.spec.name
        if order.voice not in engine.voices():
            message = f"Unknown voice '{order.voice}' for model '{model}'; available: {_listed(engine.voices())}."
            raise names.invalid("voice", message)
        if order.language is not None and not engine.accepts_language(order.language):
            languages = ", ".join(engine.languages())
            message = f"Language '{order.language}' is not spoken by model '{model}'; it speaks: {languages}."
            raise names.invalid("language", message)
        for text in order.texts:
            if not text.strip():
                raise names.invalid("texts", f"{names('texts')} must not be empty.")
            if not engine.can_speak(text, order.language):
                message = f"{names('texts')} holds no characters that model '{model}' can speak."
                raise names.invalid("texts", message)
        return engine

    @staticmethod
    def _jobs(order: SpeechOrder) -> list[SpeechJob]:
        return [
            SpeechJob(text=text, voice=order.voice, language=order.language, speed=order.speed) for text in order.texts
        ]

    # -- OpenAI: the audio as it is produced ---------------------------------------------------

    async def stream(
        self, order: SpeechOrder, audio_format: str, meter: Meter = UNMETERED, names: WireNames = SAME_NAMES
    ) -> SpeechStream:
        """The audio as it is produced. Raises before the first byte on anything refused."""
        await self.check(order, names)
        # The lease and the first sentence are had before the first byte (see started_stream).
        chunks = await started_stream(self._encoded(order, audio_format, meter, names))
        return SpeechStream(MEDIA_TYPES[audio_format], chunks)

    async def _encoded(
        self, order: SpeechOrder, audio_format: str, meter: Meter, names: WireNames
    ) -> AsyncGenerator[bytes, None]:
        encoder = AudioEncoder(audio_format, gain=order.volume)
        # Reserved from the text before the first byte, settled to the seconds spoken.
        charge = meter.speech(" ".join(order.texts), order.speed)
        call = engine_call(self.scheduler, order.model, SpeechEngine, OPERATION, names=names, charge=charge)
        async with call as (engine, record):
            for job in self._jobs(order):
                async with aclosing(_spoken_ahead(engine.stream(job))) as sentences:
                    async for audio in sentences:
                        seconds = len(audio.samples) / audio.sample_rate
                        record.produced(audio_seconds=seconds)
                        charge.add(seconds)
                        # Encoding takes milliseconds per second of audio: off the event loop, and
                        # while the engine speaks the next sentence.
                        data = await run_in(WorkPool.MEDIA, encoder.write, audio.samples, audio.sample_rate)
                        if data:
                            yield data
        yield await run_in(WorkPool.MEDIA, encoder.close)

    # -- /v3 tasks: a file per text ------------------------------------------------------------

    async def run_task(
        self,
        task_id: str,
        order: SpeechOrder,
        progress: ProgressCallback,
        *,
        audio_format: str,
        owner: str | None = None,
    ) -> TaskOutcome:
        """Each text spoken to its own file, ``<task_id>/<index>.<audio_format>``. The files are
        stored only once every text has been spoken, so a failed task leaves no partial output."""
        total = max(1, sum(len(text) for text in order.texts))
        spoken = 0
        seconds = 0.0
        files: list[bytes] = []
        call = engine_call(
            self.scheduler, order.model, SpeechEngine, OPERATION, priority=Priority.BACKGROUND, owner=owner
        )
        async with call as (engine, record):
            for job in self._jobs(order):
                result = await engine.synthesize(job)
                produced = len(result.samples) / result.sample_rate
                record.produced(audio_seconds=produced)
                seconds += produced
                data = await run_in(
                    WorkPool.MEDIA, encode_audio, result.samples, result.sample_rate, audio_format, gain=order.volume
                )
                files.append(data)
                spoken += len(job.text)
                progress(spoken / total)
        outputs = []
        for index, data in enumerate(files):
            key = f"{task_id}/{index}.{audio_format}"
            await run_in(WorkPool.STORAGE, self.storage.put, key, data)
            outputs.append(OutputFile(kind="audio", key=key, media_type=audio_format))
        return TaskOutcome(outputs=outputs, audio_seconds=seconds)


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
