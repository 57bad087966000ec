"""The pieces around speech to text that need no engine: decoding, languages, subtitles."""

from __future__ import annotations

import pytest

from engines.audio import decoding
from engines.audio.languages import WHISPER_LANGUAGES, language_code, language_name
from engines.errors import InvalidJob, JobProblem
from server.capabilities.transcription.subtitles import srt, timestamp, vtt
from tests.audio_inputs import tone
from tests.fakes_audio import fake_segments


def test_languages_are_exactly_faster_whispers() -> None:
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    assert set(WHISPER_LANGUAGES) == set(_LANGUAGE_CODES)
    assert len(set(WHISPER_LANGUAGES.values())) == len(WHISPER_LANGUAGES)  # names map back uniquely


@pytest.mark.parametrize(
    ("value", "code"), [("en", "en"), ("DE", "de"), ("German", "de"), (" haw ", "haw"), ("xx", None), ("", None)]
)
def test_language_code_takes_codes_and_names(value: str, code: str | None) -> None:
    assert language_code(value) == code


def test_language_name_falls_back_to_the_code() -> None:
    assert language_name("fr") == "french"
    assert language_name("zz") == "zz"


@pytest.mark.parametrize(
    ("seconds", "srt_form", "vtt_form"),
    [
        (0.0, "00:00:00,000", "00:00:00.000"),
        (1.2345, "00:00:01,234", "00:00:01.234"),
        (3723.5, "01:02:03,500", "01:02:03.500"),
        (59.9996, "00:01:00,000", "00:01:00.000"),  # rounding carries into the minutes
        (-0.01, "00:00:00,000", "00:00:00.000"),
    ],
)
def test_timestamps(seconds: float, srt_form: str, vtt_form: str) -> None:
    assert timestamp(seconds, ",") == srt_form
    assert timestamp(seconds, ".") == vtt_form


def test_subtitles_number_srt_cues_and_head_vtt() -> None:
    segments = fake_segments(2)
    assert srt(segments) == (
        "1\n00:00:00,000 --> 00:00:01,000\nalpha alpha.\n\n2\n00:00:01,000 --> 00:00:02,000\nbravo bravo.\n"
    )
    assert (
        vtt(segments)
        == "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nalpha alpha.\n\n00:00:01.000 --> 00:00:02.000\nbravo bravo.\n"
    )
    assert srt([]) == "" and vtt([]) == "WEBVTT\n\n"


def test_decoding_resamples_to_16_khz_mono() -> None:
    samples = decoding.decode_upload(tone(1.5, rate=44100), max_duration_s=10)
    assert samples.dtype.name == "float32"
    assert abs(samples.size - 1.5 * 16000) <= 16


def test_declared_length_over_the_limit_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded audio whose header already says it is too long")

    monkeypatch.setattr("faster_whisper.decode_audio", no_decoding)
    with pytest.raises(InvalidJob) as caught:
        decoding.decode_upload(tone(5.0), max_duration_s=4.0)
    assert (caught.value.problem, caught.value.field) == (JobProblem.AUDIO_FILE, "audio")
    assert "5.0 s" in caught.value.message


def test_length_is_checked_on_the_samples_when_the_header_declares_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoding, "declared_duration", lambda data, param="file": None)
    with pytest.raises(InvalidJob) as caught:
        decoding.decode_upload(tone(5.0), max_duration_s=4.0)
    assert caught.value.problem is JobProblem.AUDIO_FILE
    assert len(decoding.decode_upload(tone(3.0), max_duration_s=4.0)) == 3 * 16000
