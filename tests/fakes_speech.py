"""A speech engine without a model, for fast unit tests of the speech routes and tasks."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from engines.base import ModelKind, ModelSpec, SpeechAudio, SpeechJob

FAKE_SPEECH_SPEC = ModelSpec(name="fake-tts", kind=ModelKind.SPEECH, engine="fake-speech", path="-", aliases=["tts-1"])
SAMPLE_RATE = 16_000  # not the output rate, so every format path resamples
SECONDS_PER_CHAR = 0.02
FAIL_WORD = "explode"  # a sentence holding it makes synthesis fail


class FakeSpeechEngine:
    """Speaks a 440 Hz tone (its pitch per voice), SECONDS_PER_CHAR per character at speed 1."""

    voice_pitch = {"alloy": 440.0, "Emily": 330.0, "ava": 550.0}

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.loaded = False
        self.jobs: list[SpeechJob] = []

    async def load(self) -> None:
        self.loaded = True

    async def unload(self) -> None:
        self.loaded = False

    def memory_bytes(self) -> int:
        return 0

    async def health(self) -> bool:
        return self.loaded

    def voices(self) -> list[str]:
        return sorted(self.voice_pitch)

    def languages(self) -> list[str]:
        return ["en"]

    def accepts_language(self, language: str) -> bool:
        return language.lower().split("-")[0] == "en"

    def can_speak(self, text: str, language: str | None = None) -> bool:
        return re.search(r"[A-Za-z0-9]", text) is not None

    async def stream(self, job: SpeechJob) -> AsyncIterator[SpeechAudio]:
        self.jobs.append(job)
        for sentence in re.split(r"(?<=[.!?])\s+", job.text.strip()):
            await asyncio.sleep(0)
            if FAIL_WORD in sentence:
                raise RuntimeError("the fake engine failed")
            yield SpeechAudio(samples=self.tone(sentence, job), sample_rate=SAMPLE_RATE, text=sentence)

    async def synthesize(self, job: SpeechJob) -> SpeechAudio:
        chunks = [chunk.samples async for chunk in self.stream(job)]
        return SpeechAudio(samples=np.concatenate(chunks), sample_rate=SAMPLE_RATE, text=job.text)

    def tone(self, sentence: str, job: SpeechJob) -> Any:
        count = int(len(sentence) * SECONDS_PER_CHAR / job.speed * SAMPLE_RATE)
        t = np.arange(count) / SAMPLE_RATE
        return (0.5 * np.sin(2 * np.pi * self.voice_pitch[job.voice] * t)).astype(np.float32)
