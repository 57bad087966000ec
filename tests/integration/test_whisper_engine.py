"""WhisperEngine on the demo models: the tiny random one for formats and mechanics, the real
Whisper base for what the words come out as."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from engines.audio.decoding import SAMPLE_RATE, decode_upload
from engines.audio.whisper import WhisperEngine
from engines.base import TranscriptionEngine, TranscriptionJob, TranscriptionTask
from tests.audio_inputs import (
    CONTAINERS,
    SECOND_SENTENCE,
    SENTENCE,
    encode,
    espeak,
    read_wav,
    silence,
    wav,
    word_error_rate,
)

pytestmark = pytest.mark.integration

# The engines `tiny` and `base` are session fixtures (tests/integration/conftest.py).

MAX_WER = 0.2


@pytest.fixture(scope="module")
def speech() -> bytes:
    return espeak(SENTENCE)


def job(audio: Any, **options: Any) -> TranscriptionJob:
    return TranscriptionJob(audio=audio, temperature=0.0, **options)


async def test_engine_meets_the_protocol(tiny: WhisperEngine) -> None:
    assert isinstance(tiny, TranscriptionEngine)
    assert await tiny.health()
    assert "en" in tiny.languages() and "de" in tiny.languages()  # multilingual vocabulary layout
    assert tiny.memory_bytes() > 1_000_000


@pytest.mark.parametrize("container", ["wav", *CONTAINERS])
async def test_tiny_decodes_every_container(tiny: WhisperEngine, speech: bytes, container: str) -> None:
    upload = speech if container == "wav" else encode(speech, container)
    samples = decode_upload(upload, max_duration_s=60)
    result = await tiny.transcribe(job(samples, language="en"))
    seconds = len(read_wav(speech)[0]) / read_wav(speech)[1]
    # Encoders pad by a few milliseconds (AAC most); the content is the same.
    assert abs(result.duration - seconds) < 0.1
    assert result.language == "en"
    assert result.segments and all(s.temperature == 0.0 for s in result.segments)
    assert [s.id for s in result.segments] == list(range(len(result.segments)))


async def test_tiny_takes_encoded_bytes_too(tiny: WhisperEngine, speech: bytes) -> None:
    from_bytes = await tiny.transcribe(job(speech, language="en"))
    from_samples = await tiny.transcribe(job(decode_upload(speech, max_duration_s=60), language="en"))
    assert [s.text for s in from_bytes.segments] == [s.text for s in from_samples.segments]


async def test_stream_yields_what_transcribe_returns(tiny: WhisperEngine, speech: bytes) -> None:
    whole = await tiny.transcribe(job(speech, language="en", word_timestamps=True))
    streamed = [segment async for segment in tiny.transcribe_stream(job(speech, language="en", word_timestamps=True))]
    assert streamed == whole.segments
    assert any(segment.words for segment in streamed)


async def test_closing_a_stream_early_frees_the_model(tiny: WhisperEngine, speech: bytes) -> None:
    stream = tiny.transcribe_stream(job(speech, language="en"))
    first = await asyncio.wait_for(anext(stream), 60)
    await stream.aclose()
    assert first.id == 0
    # The next job gets the model: neither the asyncio queue nor the device lock is left held.
    result = await asyncio.wait_for(tiny.transcribe(job(speech, language="en")), 60)
    assert result.segments


async def test_a_cancelled_job_does_not_block_the_next(tiny: WhisperEngine, speech: bytes) -> None:
    task = asyncio.ensure_future(tiny.transcribe(job(speech, language="en")))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    result = await asyncio.wait_for(tiny.transcribe(job(speech, language="en")), 60)
    assert result.segments


async def test_base_transcribes_speech(base: WhisperEngine, speech: bytes) -> None:
    result = await base.transcribe(job(speech, word_timestamps=True))
    text = "".join(s.text for s in result.segments)
    assert result.language == "en"  # detected
    assert word_error_rate(SENTENCE, text) < MAX_WER, text
    words = [w for s in result.segments for w in s.words or []]
    assert len(words) >= 12
    assert all(w.start <= w.end for w in words)
    assert [w.start for w in words] == sorted(w.start for w in words)
    assert words[-1].end <= result.duration + 0.05


async def test_base_reads_mp3(base: WhisperEngine) -> None:
    upload = encode(espeak(SECOND_SENTENCE), "mp3")
    result = await base.transcribe(job(decode_upload(upload, max_duration_s=60), language="en"))
    text = "".join(s.text for s in result.segments)
    assert word_error_rate(SECOND_SENTENCE, text) < MAX_WER, text


async def test_base_translates_spanish_into_english(base: WhisperEngine) -> None:
    spanish = espeak("Buenos días. Me gusta mucho la música y el café.", voice="es", words_per_minute=140)
    heard = await base.transcribe(job(spanish))
    assert heard.language == "es"
    translated = await base.transcribe(job(spanish, task=TranscriptionTask.TRANSLATE))
    text = "".join(s.text for s in translated.segments).lower()
    assert "morning" in text and "coffee" in text, text
    assert "café" not in text and "buenos" not in text


class _Spy:
    """Counts calls to one of the engine's two decoders."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, target: Any) -> None:
        self.calls = 0
        original = target.transcribe

        def transcribe(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(target, "transcribe", transcribe)


async def test_base_long_audio_goes_through_the_batched_pipeline(
    base: WhisperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, rate = read_wav(espeak(SENTENCE))
    second, _ = read_wav(espeak(SECOND_SENTENCE))
    pause = silence(1.0, rate)
    long_audio = wav(np.concatenate([first, pause, second, pause] * 3), rate)
    samples = decode_upload(long_audio, max_duration_s=600)
    assert len(samples) / SAMPLE_RATE > 30  # longer than one Whisper window
    reference = " ".join([SENTENCE, SECOND_SENTENCE] * 3)

    batched = _Spy(monkeypatch, base._batched)
    sequential = _Spy(monkeypatch, base._model)
    result = await base.transcribe(job(samples, language="en"))
    assert (batched.calls, sequential.calls) == (1, 0)
    text = "".join(s.text for s in result.segments)
    assert word_error_rate(reference, text) < MAX_WER, text
    starts = [s.start for s in result.segments]
    assert starts == sorted(starts) and result.segments[-1].end > 25

    # Without the voice activity detector the sequential decoder handles long audio itself.
    result = await base.transcribe(job(samples, language="en", vad_filter=False))
    assert (batched.calls, sequential.calls) == (1, 1)
    assert word_error_rate(reference, "".join(s.text for s in result.segments)) < MAX_WER
