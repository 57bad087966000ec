"""A speech-to-text engine that implements the protocol without a model: for fast unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from engines.base import (
    ModelKind,
    ModelSpec,
    TranscribedSegment,
    TranscribedWord,
    TranscriptionJob,
    TranscriptionResult,
)

SAMPLE_RATE = 16000
# What the fake "hears" in every second of audio, in turn.
FAKE_WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]

FAKE_WHISPER_SPEC = ModelSpec(name="fake-whisper", kind=ModelKind.TRANSCRIPTION, engine="fake-whisper", path="-")
FAKE_WHISPER_EN_SPEC = ModelSpec(
    name="fake-whisper-en",
    kind=ModelKind.TRANSCRIPTION,
    engine="fake-whisper",
    path="-",
    options={"english_only": True},
)


def fake_segments(seconds: float) -> list[TranscribedSegment]:
    """One segment per whole second of audio, two words each: "<word> <word>." at s and s + 0.5."""
    segments = []
    for index in range(int(seconds)):
        word = FAKE_WORDS[index % len(FAKE_WORDS)]
        start = float(index)
        words = [
            TranscribedWord(word=f" {word}", start=start, end=start + 0.4, probability=0.9),
            TranscribedWord(word=f" {word}.", start=start + 0.5, end=start + 0.9, probability=0.9),
        ]
        segments.append(
            TranscribedSegment(
                id=index,
                seek=index * 100,
                start=start,
                end=start + 1.0,
                text=f" {word} {word}.",
                tokens=[index, index + 1],
                temperature=0.0,
                avg_logprob=-0.1,
                compression_ratio=1.0,
                no_speech_prob=0.01,
                words=words,
            )
        )
    return segments


class FakeWhisperEngine:
    """Keeps every job; "transcribes" the decoded samples into fake_segments of their length."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.loaded = False
        self.jobs: list[TranscriptionJob] = []
        self.fail_after: int | None = None  # segments to send before an engine failure

    async def load(self) -> None:
        self.loaded = True

    async def unload(self) -> None:
        self.loaded = False

    def memory_bytes(self) -> int:
        return 0

    async def health(self) -> bool:
        return self.loaded

    def languages(self) -> list[str]:
        return ["en"] if self.spec.options.get("english_only") else ["en", "de", "fr", "es"]

    def _result(self, job: TranscriptionJob) -> TranscriptionResult:
        self.jobs.append(job)
        seconds = len(job.audio) / SAMPLE_RATE
        return TranscriptionResult(
            language=job.language or "en",
            language_probability=1.0,
            duration=seconds,
            segments=fake_segments(seconds),
        )

    async def transcribe(self, job: TranscriptionJob) -> TranscriptionResult:
        return self._result(job)

    async def transcribe_stream(self, job: TranscriptionJob) -> AsyncIterator[TranscribedSegment]:
        for index, segment in enumerate(self._result(job).segments):
            if self.fail_after is not None and index >= self.fail_after:
                raise RuntimeError("decoder crashed at /secret/path")
            await asyncio.sleep(0)  # a real stream yields to the loop between segments
            yield segment
