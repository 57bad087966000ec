"""The Coqui engine on the tiny demo VITS: real synthesis, speakers, speed, sentence streaming."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from engines.audio.coqui import CoquiSpeechEngine
from engines.audio.tts_demo import SAMPLE_RATE, SPEAKERS, tts_demo_catalog
from engines.base import ModelSpec, SpeechEngine, SpeechJob
from engines.registry import CatalogError

pytestmark = pytest.mark.integration

TEXT = "Hello there. How are you today? Fine, thanks!"


@pytest.fixture(scope="module")
async def engine(demo_root: Path) -> AsyncIterator[CoquiSpeechEngine]:
    tts = CoquiSpeechEngine(tts_demo_catalog(demo_root)[0])
    await tts.load()
    yield tts
    await tts.unload()


async def test_protocol_voices_and_languages(engine: CoquiSpeechEngine) -> None:
    assert isinstance(engine, SpeechEngine)
    assert engine.sample_rate == SAMPLE_RATE
    voices = engine.voices()
    assert {"alloy", "verse", "Emily", "John", *SPEAKERS} <= set(voices)
    assert engine.languages() == ["en"]
    assert engine.accepts_language("en-US") and engine.accepts_language("EN")
    assert not engine.accepts_language("zh-CN")
    assert engine.can_speak("Hi!") and not engine.can_speak("你好") and not engine.can_speak("  ")
    assert engine.memory_bytes() > 100_000


async def test_synthesis_is_deterministic(engine: CoquiSpeechEngine) -> None:
    first = await engine.synthesize(SpeechJob(text=TEXT, voice="alloy"))
    second = await engine.synthesize(SpeechJob(text=TEXT, voice="alloy"))
    assert first.samples.dtype == np.float32
    assert np.array_equal(first.samples, second.samples)
    assert 0.01 < np.abs(first.samples).max() <= 1.0
    # About 70 ms a character plus the pauses between sentences: seconds, not milliseconds or minutes.
    assert 2.0 < len(first.samples) / first.sample_rate < 8.0


async def test_each_speaker_has_its_own_voice(engine: CoquiSpeechEngine) -> None:
    waves = [(await engine.synthesize(SpeechJob(text="Good morning.", voice=speaker))).samples for speaker in SPEAKERS]
    for index, wave in enumerate(waves):
        for other in waves[index + 1 :]:
            assert len(wave) != len(other) or not np.allclose(wave, other, atol=1e-4)
    # A catalog alias speaks as the speaker it maps to.
    alias = engine.spec.options["voices"]["nova"]
    nova = (await engine.synthesize(SpeechJob(text="Good morning.", voice="nova"))).samples
    assert np.array_equal(nova, waves[SPEAKERS.index(alias)])


async def test_speed_changes_duration(engine: CoquiSpeechEngine) -> None:
    text = "A sentence long enough to time."

    async def seconds(speed: float) -> float:
        audio = await engine.synthesize(SpeechJob(text=text, voice="echo", speed=speed))
        return len(audio.samples) / audio.sample_rate

    normal, slow, fast = await seconds(1.0), await seconds(0.5), await seconds(2.0)
    # Durations are whole frames per token (3 at speed 1): 6 at speed 0.5, 2 at speed 2.
    assert slow == pytest.approx(2 * normal, rel=0.05)
    assert fast == pytest.approx(normal * 2 / 3, rel=0.05)


async def test_stream_yields_one_chunk_per_sentence(engine: CoquiSpeechEngine) -> None:
    chunks = [chunk async for chunk in engine.stream(SpeechJob(text=TEXT, voice="Emily", language="en-US"))]
    assert [chunk.text for chunk in chunks] == ["Hello there.", "How are you today?", "Fine, thanks!"]
    whole = await engine.synthesize(SpeechJob(text=TEXT, voice="Emily"))
    assert np.array_equal(np.concatenate([chunk.samples for chunk in chunks]), whole.samples)


async def test_unknown_voice_or_language_is_refused(engine: CoquiSpeechEngine) -> None:
    with pytest.raises(ValueError, match="voice"):
        await engine.synthesize(SpeechJob(text=TEXT, voice="nobody"))
    with pytest.raises(ValueError, match="language"):
        await engine.synthesize(SpeechJob(text=TEXT, voice="alloy", language="ja-JP"))


async def test_catalog_voice_on_a_missing_speaker_fails_the_load(demo_root: Path) -> None:
    spec = tts_demo_catalog(demo_root)[0]
    broken = ModelSpec(
        **{**{f: getattr(spec, f) for f in spec.__struct_fields__}, "options": {"voices": {"alloy": "zed"}}}
    )
    with pytest.raises(CatalogError, match="zed"):
        await CoquiSpeechEngine(broken).load()
