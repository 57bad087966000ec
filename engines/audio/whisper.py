"""WhisperEngine: faster-whisper (CTranslate2 Whisper) behind the TranscriptionEngine protocol.

faster-whisper's calls block, so every job runs on a worker thread. Jobs for one model run one
at a time: CTranslate2 already spreads one decode over the cores it was given, and two decodes
side by side would only share them. Waiting jobs queue on an asyncio lock, so no worker thread
is parked while it waits; a thread lock inside keeps the decodes apart even when a cancelled
job's thread is still finishing its current segment.

Long audio (over `options.batched_min_duration_s`, 30 s: one Whisper window) goes through
faster-whisper's BatchedInferencePipeline, which cuts the audio at pauses found by its voice
activity detector and decodes the pieces as one batch; shorter audio takes the sequential
decoder, which conditions each window on the text before it. A job that turns the detector
off (`vad_filter=False`) stays sequential at any length, since the batched pipeline could then
only cut at fixed 30 s marks, through words.

Catalog options: `compute_type` (CTranslate2's, "default" keeps the stored precision where the
device supports it), `cpu_threads` (unset or 0: one per core this process may use; CTranslate2's
own default of 4 oversubscribes small machines, badly so beside torch's OpenMP threads),
`beam_size` (5), `temperature` (unset: Whisper's fallback schedule 0.0, 0.2, ... 1.0),
`batch_size` (8) and `batched_min_duration_s` (30).
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from engines.audio.decoding import SAMPLE_RATE
from engines.base import (
    ModelSpec,
    TranscribedSegment,
    TranscribedWord,
    TranscriptionJob,
    TranscriptionResult,
)
from engines.threads import run_cancellable

log = logging.getLogger("omniserve.engines.whisper")

DEFAULT_BEAM_SIZE = 5
DEFAULT_BATCH_SIZE = 8
WINDOW_S = 30.0  # Whisper reads audio in windows of this length
_END = object()  # what the worker thread sends after the last segment of a stream


class _Cancelled(Exception):
    """The job's caller went away before the decoder started."""


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _device(device: str) -> tuple[str, int]:
    """faster-whisper's (device, device_index) for a torch-style name such as "cuda:1"."""
    name, _, index = device.partition(":")
    return name, int(index or 0)


def _segment(index: int, segment: Any) -> TranscribedSegment:
    words = None
    if segment.words is not None:
        words = [
            TranscribedWord(word=w.word, start=float(w.start), end=float(w.end), probability=float(w.probability))
            for w in segment.words
        ]
    return TranscribedSegment(
        id=index,  # faster-whisper counts from 1; OpenAI's segments from 0
        seek=int(segment.seek),
        start=float(segment.start),
        end=float(segment.end),
        text=segment.text,
        tokens=list(segment.tokens),
        temperature=float(segment.temperature or 0.0),
        avg_logprob=float(segment.avg_logprob),
        compression_ratio=float(segment.compression_ratio),
        no_speech_prob=float(segment.no_speech_prob),
        words=words,
    )


class WhisperEngine:
    """One CTranslate2 Whisper model folder (model.bin, config.json, tokenizer.json, vocabulary)."""

    def __init__(self, spec: ModelSpec, *, device: str = "cpu") -> None:
        self.spec = spec
        self.device = device
        self._model: Any = None
        self._batched: Any = None
        self._queue = asyncio.Lock()
        self._compute = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    async def load(self) -> None:
        if self._model is None:
            self._model, self._batched = await asyncio.to_thread(self._load_model)

    def _load_model(self) -> tuple[Any, Any]:
        import numpy as np
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        path = Path(self.spec.path)
        if not (path / "model.bin").is_file():
            # Without this check faster-whisper would take the path for a hub model name.
            raise FileNotFoundError(f"model {self.spec.name}: no CTranslate2 Whisper model.bin in {path}")
        options = self.spec.options
        device, index = _device(self.device)
        log.info("loading whisper model %s with faster-whisper", self.spec.name)
        model = WhisperModel(
            str(path),
            device=device,
            device_index=index,
            compute_type=str(options.get("compute_type", "default")),
            cpu_threads=int(options.get("cpu_threads") or available_cores()),
            local_files_only=True,
        )
        # Warm-up, so that the first request does not pay for lazy initialisation.
        segments, _ = model.transcribe(
            np.zeros(SAMPLE_RATE, dtype=np.float32),
            language="en" if model.model.is_multilingual else None,
            beam_size=1,
            temperature=0.0,
            max_new_tokens=2,
            without_timestamps=True,
        )
        for _ in segments:
            pass
        return model, BatchedInferencePipeline(model)

    async def unload(self) -> None:
        self._model = self._batched = None

    def memory_bytes(self) -> int:
        if self.spec.memory_bytes or self._model is None:
            return self.spec.memory_bytes
        # The weights as stored; a float16 model computed in float32 (on CPU) takes twice this.
        return (Path(self.spec.path) / "model.bin").stat().st_size

    async def health(self) -> bool:
        return self._model is not None

    def languages(self) -> list[str]:
        return list(self._require_model().supported_languages)

    def _require_model(self) -> Any:
        if self._model is None:
            raise RuntimeError(f"model {self.spec.name} is not loaded")
        return self._model

    async def transcribe(self, job: TranscriptionJob) -> TranscriptionResult:
        self._require_model()
        async with self._queue:
            return await run_cancellable(lambda cancelled: self._run(job, cancelled, None))

    async def transcribe_stream(self, job: TranscriptionJob) -> AsyncIterator[TranscribedSegment]:
        self._require_model()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()

        def send(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                cancelled.set()

        def work() -> None:
            try:
                self._run(job, cancelled, send)
            except BaseException as exc:  # handed to the consumer, which raises it
                send(exc)
                return
            send(_END)

        async with self._queue:
            # A plain executor future: the thread reports through the queue and never raises.
            loop.run_in_executor(None, work)
            try:
                while (item := await queue.get()) is not _END:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                cancelled.set()  # no-op after the last segment; otherwise the thread stops early

    def _run(
        self, job: TranscriptionJob, cancelled: threading.Event, on_segment: Callable[[TranscribedSegment], None] | None
    ) -> TranscriptionResult:
        audio = job.audio
        if isinstance(audio, bytes | bytearray):
            from faster_whisper import decode_audio

            audio = decode_audio(io.BytesIO(audio), sampling_rate=SAMPLE_RATE)
        options = self.spec.options
        duration = audio.shape[0] / SAMPLE_RATE
        batched = job.batched
        if batched is None:
            threshold = float(options.get("batched_min_duration_s", WINDOW_S))
            batched = duration > threshold and job.vad_filter is not False
        vad_filter = job.vad_filter if job.vad_filter is not None else batched
        temperature = job.temperature if job.temperature is not None else options.get("temperature")
        kwargs: dict[str, Any] = {
            "language": job.language,
            "task": job.task.value,
            "initial_prompt": job.prompt or None,
            "beam_size": job.beam_size or int(options.get("beam_size", DEFAULT_BEAM_SIZE)),
            "word_timestamps": job.word_timestamps,
            "vad_filter": vad_filter,
        }
        if temperature is not None:
            kwargs["temperature"] = temperature
        with self._compute:
            if cancelled.is_set():
                raise _Cancelled
            if batched:
                if not vad_filter and duration > WINDOW_S:
                    # Asked for explicitly: without the detector, cut at fixed window marks.
                    kwargs["clip_timestamps"] = [
                        {"start": start, "end": min(start + WINDOW_S, duration)}
                        for start in range(0, math.ceil(duration), int(WINDOW_S))
                    ]
                batch_size = int(options.get("batch_size", DEFAULT_BATCH_SIZE))
                segments, info = self._batched.transcribe(audio, batch_size=batch_size, **kwargs)
            else:
                segments, info = self._model.transcribe(audio, **kwargs)
            # Both decoders are lazy: each segment is decoded when the loop asks for it.
            decoded: list[TranscribedSegment] = []
            for segment in segments:
                if cancelled.is_set():
                    break
                item = _segment(len(decoded), segment)
                decoded.append(item)
                if on_segment is not None:
                    on_segment(item)
        return TranscriptionResult(
            language=info.language,
            language_probability=float(info.language_probability),
            duration=float(info.duration),
            segments=decoded,
        )
