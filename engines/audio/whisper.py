"""WhisperEngine: faster-whisper (CTranslate2 Whisper) behind the TranscriptionEngine protocol.

faster-whisper's calls block, so every job runs on a worker thread. Jobs for one model run one
at a time: CTranslate2 already spreads one decode over the cores it was given, and two decodes
side by side would only share them. Waiting jobs queue on an asyncio lock, so no worker thread
is parked while it waits; a thread lock inside keeps the decodes apart even when a cancelled
job's thread is still finishing its current segment.

Audio of one Whisper window at most (30 s) is batched across requests: while a decode runs, the
short jobs that arrive wait together, and the model's next turn decodes them in one call, since
one short decode leaves most of the device idle (engines/audio/whisper_batching.py says why and
how). A lone job runs at once, so batching adds no latency at low load. A job the batched call
cannot finish as the sequential decoder would (its text stops before its audio does, or it fails
a check that the temperature schedule would retry) goes on to that decoder.

Long audio (over `options.batched_min_duration_s`, 30 s) goes through faster-whisper's
BatchedInferencePipeline, which cuts the audio at pauses found by its voice activity detector
and decodes the pieces as one batch. The rest takes the sequential decoder, which conditions
each window on the text before it: streams (their segments are sent as they are decoded), jobs
that ask for it (`batched=False`), sampling at a fixed temperature above 0, and long audio with
the detector off (`vad_filter=False`), since the batched pipeline could then only cut at fixed
30 s marks, through words.

For metrics: `batches_run` (batched decoder calls across requests), `batched_jobs` (the jobs
they decoded), `batch_sizes` (jobs per such call, the last 100) and `waiting_jobs` (short jobs
waiting for the model).

Catalog options: `compute_type` (CTranslate2's, "default" keeps the stored precision where the
device supports it), `cpu_threads` (unset or 0: one per core this process may use; CTranslate2's
own default of 4 oversubscribes small machines, badly so beside torch's OpenMP threads),
`beam_size` (5), `temperature` (unset: Whisper's fallback schedule 0.0, 0.2, ... 1.0),
`batch_size` (8: chunks per batch of one long file, and jobs per batch across requests),
`batched_min_duration_s` (30), `batch_requests` (true; false decodes every job alone) and
`batch_wait_ms` (0: how long a batch that is not full waits for more jobs before it starts),
`max_duration_s` (3600: the longest audio a job may hand over as an encoded file, decoded
here; the server hands over samples it decoded within its own limit).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec

from engines.audio.decoding import SAMPLE_RATE, decode_upload
from engines.audio.whisper_batching import WindowJob, WindowResult, decode_windows, transcribe_default
from engines.base import (
    ModelSpec,
    TranscribedSegment,
    TranscribedWord,
    TranscriptionJob,
    TranscriptionResult,
)
from engines.batch_queue import BatchQueue
from engines.threads import run_cancellable
from engines.workpools import WorkPool, executor, run_in

log = logging.getLogger("omniserve.engines.whisper")

DEFAULT_BEAM_SIZE = 5
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_DURATION_S = 3600.0
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


def _window_result(window: WindowResult) -> TranscriptionResult:
    return TranscriptionResult(
        language=window.language,
        language_probability=window.language_probability,
        duration=window.duration,
        segments=[_segment(index, segment) for index, segment in enumerate(window.segments)],
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
        options = spec.options
        self._batch_requests = bool(options.get("batch_requests", True))
        self._windows: BatchQueue[WindowJob, TranscriptionResult | None] = BatchQueue(
            self._decode_windows,
            gate=self._queue,
            key=lambda window: window.key,
            max_jobs=int(options.get("batch_size", DEFAULT_BATCH_SIZE)),
            wait_s=float(options.get("batch_wait_ms", 0)) / 1000,
        )
        self.batches_run = 0  # batched decoder calls across requests
        self.batched_jobs = 0  # the jobs those calls decoded
        self.batch_sizes: list[int] = []  # jobs per such call, most recent last (bounded)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def waiting_jobs(self) -> int:
        """Short jobs waiting for their batch while the model is busy."""
        return self._windows.waiting

    async def load(self) -> None:
        if self._model is None:
            self._model, self._batched = await run_in(WorkPool.ENGINE, self._load_model)

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
        self._windows.fail_waiting(RuntimeError(f"model {self.spec.name} was unloaded"))
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
        window = await self._window_job(job)
        if window is not None:
            result = await self._windows.submit(window)
            if result is not None:
                return result
            # The batched call could not finish it as the sequential decoder would: that decoder does.
            job = msgspec.structs.replace(window.job, batched=False, vad_filter=window.vad_filter)
        async with self._queue:
            return await run_cancellable(lambda cancelled: self._run(job, cancelled, None))

    async def _window_job(self, job: TranscriptionJob) -> WindowJob | None:
        """The job as a candidate for a batch across requests; None: it takes the other paths."""
        if not self._batch_requests or job.batched is False:
            return None
        samples = job.audio
        if isinstance(samples, bytes | bytearray):
            samples = await run_in(WorkPool.MEDIA, self._decode, samples)
            job = msgspec.structs.replace(job, audio=samples)
        # Audio over the long-audio threshold, where that is set below one window, keeps its pipeline.
        longest = min(WINDOW_S, float(self.spec.options.get("batched_min_duration_s", WINDOW_S)))
        if samples.shape[0] / SAMPLE_RATE > longest:
            return None
        temperatures = self._temperatures(job)
        if temperatures[0] != 0:
            return None  # sampling: the batched call decodes at temperature 0 only
        return WindowJob(
            job,
            samples,
            beam_size=self._beam_size(job),
            vad_filter=job.vad_filter if job.vad_filter is not None else bool(job.batched),
            may_fall_back=len(temperatures) > 1,
        )

    def _decode(self, data: bytes | bytearray) -> Any:
        """An encoded file's samples, within the engine's own duration limit."""
        limit = float(self.spec.options.get("max_duration_s", DEFAULT_MAX_DURATION_S))
        return decode_upload(bytes(data), max_duration_s=limit, label="audio")

    def _decode_windows(self, jobs: list[WindowJob]) -> list[TranscriptionResult | BaseException | None]:
        with self._compute:
            windows = decode_windows(self._require_model(), jobs, self._record_batch)
        return [None if window is None else _window_result(window) for window in windows]

    def _record_batch(self, size: int) -> None:
        self.batches_run += 1
        self.batched_jobs += size
        self.batch_sizes = [*self.batch_sizes[-99:], size]

    def _temperatures(self, job: TranscriptionJob) -> list[float]:
        """The temperatures the sequential decoder would try, in order."""
        temperature = job.temperature if job.temperature is not None else self.spec.options.get("temperature")
        if temperature is None:
            temperature = transcribe_default("temperature")  # Whisper's fallback schedule
        return [float(t) for t in temperature] if isinstance(temperature, list | tuple) else [float(temperature)]

    def _beam_size(self, job: TranscriptionJob) -> int:
        return job.beam_size or int(self.spec.options.get("beam_size", DEFAULT_BEAM_SIZE))

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
            loop.run_in_executor(executor(WorkPool.ENGINE), work)
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
            audio = self._decode(audio)
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
            "beam_size": self._beam_size(job),
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
