"""Batches across requests in WhisperEngine, on the real Whisper base: short jobs that wait for the
model together share its decoder calls, and each still gets its own words and times.

A stream holds the model until it is closed (see `model_busy`), so jobs submitted meanwhile are
known to wait together: which jobs share a call is then certain, not a matter of timing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from engines.audio.decoding import SAMPLE_RATE, decode_upload
from engines.audio.whisper import WhisperEngine
from engines.base import TranscriptionJob, TranscriptionResult, TranscriptionTask
from tests.audio_inputs import SECOND_SENTENCE, SENTENCE, espeak, read_wav, silence, wav, word_error_rate

pytestmark = pytest.mark.integration

MAX_WER = 0.2
# Short sentences Whisper base reads back from espeak-ng's voice.
SENTENCES = [
    SENTENCE,
    SECOND_SENTENCE,
    "We bought fresh bread and cheese at the market.",
    "Could you please open the window in the kitchen?",
]
SPANISH = "Buenos días. Me gusta mucho la música y el café."


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [decode_upload(espeak(sentence), max_duration_s=60) for sentence in SENTENCES]


@pytest.fixture(scope="module")
def spanish() -> np.ndarray:
    return decode_upload(espeak(SPANISH, voice="es", words_per_minute=140), max_duration_s=60)


@pytest.fixture(scope="module")
def two_sentences() -> np.ndarray:
    first, rate = read_wav(espeak(SENTENCE))
    second, _ = read_wav(espeak(SECOND_SENTENCE))
    return decode_upload(wav(np.concatenate([first, silence(1.0, rate), second]), rate), max_duration_s=60)


def text(result: TranscriptionResult) -> str:
    return "".join(segment.text for segment in result.segments)


async def until(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), 120)


@contextlib.asynccontextmanager
async def model_busy(engine: WhisperEngine, audio: Any) -> AsyncIterator[None]:
    """The engine's model taken by a stream, suspended after its first segment; closing the stream
    on the way out frees the model for whatever waits."""
    stream = engine.transcribe_stream(TranscriptionJob(audio=audio, language="en", temperature=0.0))
    await asyncio.wait_for(anext(stream), 300)
    try:
        yield
    finally:
        await stream.aclose()


def submit(engine: WhisperEngine, audio: Any, **options: Any) -> asyncio.Future[TranscriptionResult]:
    return asyncio.ensure_future(engine.transcribe(TranscriptionJob(audio=audio, **options)))


def assert_reads(sentence: str, result: TranscriptionResult, audio: np.ndarray) -> None:
    assert word_error_rate(sentence, text(result)) < MAX_WER, text(result)
    assert abs(result.duration - len(audio) / SAMPLE_RATE) < 0.01
    assert [segment.id for segment in result.segments] == list(range(len(result.segments)))
    times = [t for segment in result.segments for t in (segment.start, segment.end)]
    assert times == sorted(times) and times[0] >= 0 and times[-1] <= result.duration + 0.05


async def test_concurrent_short_jobs_share_decoder_calls(base: WhisperEngine, clips: list[np.ndarray]) -> None:
    calls_before, jobs_before = base.batches_run, base.batched_jobs
    # Temperature and language left open, as most clients leave them.
    jobs = [submit(base, clip, word_timestamps=True) for clip in clips]
    together = await asyncio.wait_for(asyncio.gather(*jobs), 300)
    calls = base.batches_run - calls_before
    assert calls < len(clips)
    assert base.batched_jobs - jobs_before == len(clips)
    assert max(base.batch_sizes[-calls:]) > 1
    for sentence, clip, result in zip(SENTENCES, clips, together, strict=True):
        assert (result.language, result.language_probability < 1) == ("en", True)  # detected per job
        assert_reads(sentence, result, clip)
        words = [word for segment in result.segments for word in segment.words or []]
        assert len(words) >= 8
        assert [w.start for w in words] == sorted(w.start for w in words)
        assert all(0 <= w.start <= w.end <= result.duration + 0.05 for w in words)

    # The same clip alone through the same path reads the same.
    for clip, batched in zip(clips, together, strict=True):
        calls_before = base.batches_run
        alone = await asyncio.wait_for(base.transcribe(TranscriptionJob(audio=clip, word_timestamps=True)), 300)
        assert (base.batches_run - calls_before, base.batch_sizes[-1]) == (1, 1)
        assert [(s.text, s.start, s.end) for s in alone.segments] == [
            (s.text, s.start, s.end) for s in batched.segments
        ]
        assert alone.language == batched.language


async def test_jobs_that_arrive_during_a_decode_wait_for_it_together(
    base: WhisperEngine, clips: list[np.ndarray], two_sentences: np.ndarray
) -> None:
    async with model_busy(base, two_sentences):
        jobs = [submit(base, clip, language="en") for clip in clips]
        await until(lambda: base.waiting_jobs == len(clips))
        calls_before = base.batches_run
    results = await asyncio.wait_for(asyncio.gather(*jobs), 300)
    assert (base.batches_run - calls_before, base.batch_sizes[-1]) == (1, len(clips))
    for sentence, clip, result in zip(SENTENCES, clips, results, strict=True):
        assert (result.language, result.language_probability) == ("en", 1.0)
        assert_reads(sentence, result, clip)


async def test_a_job_cancelled_while_queued_leaves_its_batch(
    base: WhisperEngine, clips: list[np.ndarray], two_sentences: np.ndarray
) -> None:
    async with model_busy(base, two_sentences):
        jobs = [submit(base, clip, language="en", temperature=0.0) for clip in clips[:3]]
        await until(lambda: base.waiting_jobs == 3)
        jobs[1].cancel()
        await until(lambda: base.waiting_jobs == 2)
        calls_before = base.batches_run
    results = await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), 300)
    assert isinstance(results[1], asyncio.CancelledError)
    assert (base.batches_run - calls_before, base.batch_sizes[-1]) == (1, 2)
    for index in (0, 2):
        result = results[index]
        assert isinstance(result, TranscriptionResult)
        assert_reads(SENTENCES[index], result, clips[index])


async def test_incompatible_jobs_are_split_and_all_succeed(
    base: WhisperEngine, clips: list[np.ndarray], spanish: np.ndarray, two_sentences: np.ndarray
) -> None:
    async with model_busy(base, two_sentences):
        english = submit(base, clips[0], language="en")
        heard = submit(base, spanish)  # detected: Spanish, in the same batch as the English jobs
        greedy = submit(base, clips[1], beam_size=1)  # another beam: another call
        detected = submit(base, clips[2])
        translated = submit(base, spanish, task=TranscriptionTask.TRANSLATE)  # another task
        await until(lambda: base.waiting_jobs == 5)
        calls_before = base.batches_run
    english_result, heard_result, greedy_result, detected_result, translated_result = await asyncio.wait_for(
        asyncio.gather(english, heard, greedy, detected, translated), 600
    )
    # First the English and the Spanish of one key (split by language), then each other key alone.
    assert base.batch_sizes[calls_before - base.batches_run :] == [2, 1, 1, 1]
    assert_reads(SENTENCES[0], english_result, clips[0])
    assert_reads(SENTENCES[1], greedy_result, clips[1])
    assert_reads(SENTENCES[2], detected_result, clips[2])
    assert detected_result.language == "en"
    assert heard_result.language == "es" and "música" in text(heard_result).lower()
    translation = text(translated_result).lower()
    assert "morning" in translation and "coffee" in translation, translation


async def test_a_failed_batch_fails_each_of_its_jobs_and_the_engine_goes_on(
    tiny: WhisperEngine, two_sentences: np.ndarray
) -> None:
    good = np.zeros(SAMPLE_RATE, dtype=np.float32)
    stereo = np.zeros((SAMPLE_RATE, 2), dtype=np.float32)  # not the mono samples an engine takes
    async with model_busy(tiny, two_sentences):
        jobs = [submit(tiny, good, language="en"), submit(tiny, stereo, language="en")]
        await until(lambda: tiny.waiting_jobs == 2)
    results = await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), 120)
    assert all(isinstance(result, Exception) for result in results), results
    assert results[0] is results[1]  # the batch's one error
    after = await asyncio.wait_for(tiny.transcribe(TranscriptionJob(audio=good, language="en")), 120)
    assert after.duration == 1.0


async def test_unload_fails_the_jobs_that_wait(stt_root: Any, two_sentences: np.ndarray) -> None:
    from engines.audio.stt_demo import TINY_MODEL, build_stt_demo_models

    spec = next(spec for spec in build_stt_demo_models(stt_root) if spec.name == TINY_MODEL)
    engine = WhisperEngine(spec)  # its own: this test unloads it
    await engine.load()
    async with model_busy(engine, two_sentences):
        jobs = [submit(engine, np.zeros(SAMPLE_RATE, dtype=np.float32), language="en") for _ in range(2)]
        await until(lambda: engine.waiting_jobs == 2)
        await engine.unload()
    results = await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), 120)
    assert all(isinstance(result, RuntimeError) and "unloaded" in str(result) for result in results), results
    assert engine.waiting_jobs == 0
