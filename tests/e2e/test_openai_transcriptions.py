"""OpenAI's speech-to-text API with the official openai SDK against a running omniserve.

Speech comes from espeak-ng; demo-whisper (the real Whisper base) must read it back with a
word error rate under MAX_WER in every response format and container.
"""

from __future__ import annotations

import io
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import soundfile

from tests.audio_inputs import SECOND_SENTENCE, SENTENCE, encode, espeak, read_wav, silence, wav, word_error_rate
from tests.e2e.conftest import RunningServer, scraped

pytestmark = pytest.mark.e2e

MODEL = "demo-whisper"
MAX_WER = 0.2
_SRT_CUE = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})\n(.+?)\n(?:\n|$)", re.S)
_VTT_CUE = re.compile(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})\n(.+?)\n(?:\n|$)", re.S)


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_url, api_key=server.api_key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def speech() -> bytes:
    return espeak(SENTENCE)


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def _cues(pattern: re.Pattern[str], body: str, time_groups: slice) -> list[tuple[float, float, str]]:
    cues = []
    for match in pattern.finditer(body):
        groups = match.groups()[time_groups]
        start, end = _seconds(*groups[:4]), _seconds(*groups[4:8])
        cues.append((start, end, match.group(match.lastindex or 0)))
    return cues


def parse_srt(body: str) -> list[tuple[float, float, str]]:
    numbers = [int(match.group(1)) for match in _SRT_CUE.finditer(body)]
    assert numbers == list(range(1, len(numbers) + 1)), body
    return _cues(_SRT_CUE, body, slice(1, 9))


def parse_vtt(body: str) -> list[tuple[float, float, str]]:
    assert body.startswith("WEBVTT\n\n"), body
    return _cues(_VTT_CUE, body, slice(0, 8))


def _text_of(response_format: str, result: Any) -> str:
    if response_format in ("json", "verbose_json"):
        return str(result.text)
    assert isinstance(result, str)
    if response_format == "text":
        return result
    cues = parse_srt(result) if response_format == "srt" else parse_vtt(result)
    assert cues, result
    assert all(start < end for start, end, _ in cues)
    assert [start for start, _, _ in cues] == sorted(start for start, _, _ in cues)
    return " ".join(text for _, _, text in cues)


@pytest.mark.parametrize(
    ("response_format", "container", "model"),
    [
        ("json", "wav", MODEL),
        ("text", "mp3", "whisper-1"),  # the openai SDK's usual model name is an alias
        ("srt", "flac", MODEL),
        ("vtt", "ogg", MODEL),
        ("verbose_json", "m4a", MODEL),
        ("json", "webm", MODEL),
    ],
)
def test_every_format_reads_the_sentence(
    client: openai.OpenAI, speech: bytes, response_format: Any, container: str, model: str
) -> None:
    upload = speech if container == "wav" else encode(speech, container)
    result = client.audio.transcriptions.create(
        file=(f"speech.{container}", upload), model=model, response_format=response_format, temperature=0
    )
    text = _text_of(response_format, result)
    assert word_error_rate(SENTENCE, text) < MAX_WER, text


def test_verbose_json_with_word_timestamps(client: openai.OpenAI, speech: bytes) -> None:
    result = client.audio.transcriptions.create(
        file=("speech.wav", speech),
        model=MODEL,
        response_format="verbose_json",
        timestamp_granularities=["word"],
        temperature=0,
    )
    samples, rate = read_wav(speech)
    assert result.language == "english"
    assert abs(result.duration - len(samples) / rate) < 0.05
    assert result.words is not None and len(result.words) >= 12
    starts = [word.start for word in result.words]
    assert starts == sorted(starts) and starts[-1] > starts[0]
    assert all(word.start <= word.end <= result.duration + 0.05 for word in result.words)
    assert word_error_rate(SENTENCE, " ".join(word.word for word in result.words)) < MAX_WER


def test_translation_into_english(client: openai.OpenAI) -> None:
    spanish = espeak("Buenos días. Me gusta mucho la música y el café.", voice="es", words_per_minute=140)
    result = client.audio.translations.create(file=("spanish.wav", spanish), model=MODEL, temperature=0)
    text = result.text.lower()
    assert "morning" in text and "coffee" in text, text
    assert "café" not in text


def test_streaming_transcription(client: openai.OpenAI) -> None:
    first, rate = read_wav(espeak(SENTENCE))
    second, _ = read_wav(espeak(SECOND_SENTENCE))
    two_sentences = wav(np.concatenate([first, silence(1.0, rate), second]), rate)
    stream = client.audio.transcriptions.create(
        file=("speech.wav", two_sentences), model=MODEL, stream=True, temperature=0
    )
    events = list(stream)
    assert [event.type for event in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1)
    assert events[-1].type == "transcript.text.done"
    deltas = "".join(event.delta for event in events[:-1])  # type: ignore[union-attr]
    assert deltas.strip() == events[-1].text  # type: ignore[union-attr]
    assert word_error_rate(f"{SENTENCE} {SECOND_SENTENCE}", events[-1].text) < MAX_WER  # type: ignore[union-attr]


def test_vad_filter_extra_skips_long_silence(client: openai.OpenAI) -> None:
    samples, rate = read_wav(espeak(SENTENCE))
    padded = wav(np.concatenate([silence(8.0, rate), samples, silence(8.0, rate)]), rate)
    result = client.audio.transcriptions.create(
        file=("speech.wav", padded),
        model=MODEL,
        response_format="verbose_json",
        temperature=0,
        extra_body={"vad_filter": True},
    )
    assert word_error_rate(SENTENCE, result.text) < MAX_WER, result.text
    assert result.segments and result.segments[0].start >= 7.0  # times stay those of the original audio


def _error(call: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    return caught.value


def _wav_of_length(seconds: float) -> bytes:
    """A small file that declares a long duration: 8-bit samples at 1 kHz."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(int(seconds * 1000), dtype=np.float32), 1000, format="WAV", subtype="PCM_U8")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("upload", "fields", "status", "code", "param"),
    [
        (b"not audio, just some text bytes " * 20, {}, 400, "INVALID_AUDIO_FILE", "file"),
        (b"", {}, 400, "INVALID_AUDIO_FILE", "file"),
        ("truncated", {}, 400, "INVALID_AUDIO_FILE", "file"),
        ("over-an-hour", {}, 400, "INVALID_AUDIO_FILE", "file"),
        ("speech", {"model": "no-such-model"}, 404, "MODEL_NOT_FOUND", "model"),
        ("speech", {"model": "demo-sd"}, 400, "INVALID_REQUEST_BODY", "model"),
        ("speech", {"language": "xx"}, 400, "INVALID_REQUEST_BODY", "language"),
        ("speech", {"response_format": "docx"}, 400, "INVALID_REQUEST_BODY", "response_format"),
        ("speech", {"temperature": 1.5}, 400, "INVALID_REQUEST_BODY", "temperature"),
        ("speech", {"stream": True, "language": "xx"}, 400, "INVALID_REQUEST_BODY", "language"),
    ],
)
def test_bad_input_is_refused_with_its_code(
    client: openai.OpenAI, speech: bytes, upload: Any, fields: dict[str, Any], status: int, code: str, param: str
) -> None:
    data = {"speech": speech, "truncated": speech[:44], "over-an-hour": _wav_of_length(3601)}.get(upload, upload)
    error = _error(lambda: client.audio.transcriptions.create(file=("input.wav", data), **{"model": MODEL, **fields}))
    assert (error.status_code, error.code, error.param) == (status, code, param), error.body
    assert "Traceback" not in str(error.body)


def test_upload_over_the_limit_is_413(client: openai.OpenAI) -> None:
    too_large = b"\0" * (25 * 1024 * 1024 + 1)  # audio.max_upload_bytes is 25 MiB by default
    error = _error(lambda: client.audio.transcriptions.create(file=("big.wav", too_large), model=MODEL))
    assert (error.status_code, error.code) == (413, "REQUEST_BODY_TOO_LARGE")


def test_routes_need_a_key(server: RunningServer, speech: bytes) -> None:
    response = httpx.post(
        f"{server.openai_url}/audio/transcriptions",
        data={"model": MODEL},
        files={"file": ("speech.wav", speech)},
        timeout=60,
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "MISSING_API_KEY"


def test_concurrent_transcriptions_are_decoded_together(
    client: openai.OpenAI, server: RunningServer, speech: bytes
) -> None:
    def batched() -> tuple[float, float]:
        samples, labels = scraped(server.base_url), frozenset({("model", MODEL)})
        calls = samples[("omniserve_engine_batches_total", labels)]
        return calls, samples[("omniserve_engine_batched_requests_total", labels)]

    calls_before, jobs_before = batched()
    with ThreadPoolExecutor(max_workers=4) as pool:
        texts = list(pool.map(lambda _: client.audio.transcriptions.create(model=MODEL, file=speech).text, range(4)))
    assert all(word_error_rate(SENTENCE, text) < MAX_WER for text in texts), texts
    calls, jobs = batched()
    # Every short clip goes through the batch path. The four arrive within milliseconds and a
    # decode takes far longer, so at least three of them wait together for the model.
    assert jobs - jobs_before == 4
    assert calls - calls_before < 4
