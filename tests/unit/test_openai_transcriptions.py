"""OpenAI /audio/transcriptions and /audio/translations through the real app, with a fake engine.

Uploads are real audio files, decoded by the real PyAV path; only the model is faked
(tests/fakes_audio.py hears two words per second of audio).
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from PIL import Image

from engines.base import TranscribedSegment, TranscriptionJob, TranscriptionTask
from engines.errors import EngineFailure
from server.app import build_components, create_app
from server.settings import Settings
from tests.audio_inputs import encode, lying_mp3, tone
from tests.fakes import FAKE_SPECS, fake_factory
from tests.fakes_audio import FAKE_WHISPER_EN_SPEC, FAKE_WHISPER_SPEC, FakeWhisperEngine

THREE_SECONDS = tone(3.0)
# What the fake hears in three seconds: six words in three segments.
THREE_SECONDS_TEXT = "alpha alpha. bravo bravo. charlie charlie."

AudioClient = Callable[..., Any]


@pytest.fixture
async def make_client(tmp_path: Path) -> AsyncIterator[AudioClient]:
    """A client factory: audio settings as keyword arguments (e.g. max_duration_s=1)."""
    clients: list[AsyncTestClient] = []

    async def make(**audio: Any) -> AsyncTestClient:
        settings = msgspec.convert({"data_dir": str(tmp_path), "audio": audio}, Settings)
        specs = [*FAKE_SPECS, FAKE_WHISPER_SPEC, FAKE_WHISPER_EN_SPEC]
        state = build_components(settings, specs, {"fake": fake_factory, "fake-whisper": FakeWhisperEngine})
        client = AsyncTestClient(create_app(state))
        await client.__aenter__()
        await state.load_task  # type: ignore[misc]
        client.app_state = state  # type: ignore[attr-defined]
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.__aexit__(None, None, None)


@pytest.fixture
async def client(make_client: AudioClient) -> AsyncTestClient:
    return await make_client()  # type: ignore[no-any-return]


def engine(client: AsyncTestClient, name: str = "fake-whisper") -> FakeWhisperEngine:
    found = client.app_state.scheduler.engine(name)  # type: ignore[attr-defined]
    assert isinstance(found, FakeWhisperEngine)
    return found


async def transcribe(
    client: AsyncTestClient,
    fields: dict[str, Any] | None = None,
    *,
    audio: bytes = THREE_SECONDS,
    filename: str = "speech.wav",
    route: str = "/openai/v1/audio/transcriptions",
) -> Any:
    # A list value goes out as repeated parts, as the SDK sends "timestamp_granularities[]".
    data = {"model": "fake-whisper", **(fields or {})}
    return await client.post(route, data=data, files={"file": (filename, audio, "application/octet-stream")})


def error_of(response: Any) -> tuple[int, str, str | None]:
    error = response.json()["error"]
    return response.status_code, error["code"], error["param"]


@pytest.mark.parametrize("prefix", ["/v1", "/openai/v1"])
async def test_json_is_the_default_format(client: AsyncTestClient, prefix: str) -> None:
    response = await transcribe(client, route=f"{prefix}/audio/transcriptions")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"text": THREE_SECONDS_TEXT, "usage": {"type": "duration", "seconds": 3.0}}


async def test_text_srt_and_vtt(client: AsyncTestClient) -> None:
    text = await transcribe(client, {"response_format": "text"})
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text == THREE_SECONDS_TEXT + "\n"

    srt = await transcribe(client, {"response_format": "srt"})
    assert srt.text.startswith("1\n00:00:00,000 --> 00:00:01,000\nalpha alpha.\n\n2\n00:00:01,000 --> 00:00:02,000\n")
    assert srt.text.endswith("3\n00:00:02,000 --> 00:00:03,000\ncharlie charlie.\n")

    vtt = await transcribe(client, {"response_format": "vtt"})
    assert vtt.text.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nalpha alpha.\n\n00:00:01.000 --> ")


async def test_verbose_json_gives_segments_by_default(client: AsyncTestClient) -> None:
    response = await transcribe(client, {"response_format": "verbose_json", "language": "de"})
    body = response.json()
    assert body["task"] == "transcribe"
    assert body["language"] == "german"
    assert body["duration"] == 3.0
    assert body["text"] == THREE_SECONDS_TEXT
    assert [s["text"] for s in body["segments"]] == [" alpha alpha.", " bravo bravo.", " charlie charlie."]
    assert {"id", "seek", "start", "end", "tokens", "temperature", "avg_logprob", "compression_ratio"} <= set(
        body["segments"][0]
    )
    assert "words" not in body
    assert engine(client).jobs[-1].word_timestamps is False


async def test_word_granularity_on_the_wire_as_the_sdk_sends_it(client: AsyncTestClient) -> None:
    fields = {"response_format": "verbose_json", "timestamp_granularities[]": ["word"]}
    body = (await transcribe(client, fields)).json()
    assert engine(client).jobs[-1].word_timestamps is True
    assert "segments" not in body
    assert [w["word"] for w in body["words"]][:3] == ["alpha", "alpha.", "bravo"]  # no leading spaces
    starts = [w["start"] for w in body["words"]]
    assert starts == sorted(starts) and len(starts) == 6

    both = {**fields, "timestamp_granularities[]": ["word", "segment"]}
    body = (await transcribe(client, both)).json()
    assert len(body["words"]) == 6 and len(body["segments"]) == 3


async def test_request_options_reach_the_engine(client: AsyncTestClient) -> None:
    fields = {"language": "English", "prompt": "Alpha, Bravo.", "temperature": "0.4", "vad_filter": "true"}
    assert (await transcribe(client, fields)).status_code == 200
    job = engine(client).jobs[-1]
    assert (job.language, job.prompt, job.temperature, job.vad_filter) == ("en", "Alpha, Bravo.", 0.4, True)
    assert job.task is TranscriptionTask.TRANSCRIBE
    assert job.audio.dtype.name == "float32" and len(job.audio) == 3 * 16000  # decoded to 16 kHz mono

    assert (await transcribe(client)).status_code == 200
    job = engine(client).jobs[-1]
    assert (job.language, job.prompt, job.temperature, job.vad_filter) == (None, None, None, None)


async def test_translation_runs_the_translate_task(client: AsyncTestClient) -> None:
    fields = {"response_format": "verbose_json", "temperature": "0"}
    response = await transcribe(client, fields, route="/openai/v1/audio/translations")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["task"], body["language"], body["text"]) == ("translate", "english", THREE_SECONDS_TEXT)
    job = engine(client).jobs[-1]
    assert job.task is TranscriptionTask.TRANSLATE and job.language is None


@pytest.mark.parametrize("container", ["mp3", "flac", "ogg", "m4a", "webm"])
async def test_other_containers_are_decoded(client: AsyncTestClient, container: str) -> None:
    response = await transcribe(client, audio=encode(THREE_SECONDS, container), filename=f"speech.{container}")
    assert response.status_code == 200, response.text
    assert abs(len(engine(client).jobs[-1].audio) / 16000 - 3.0) < 0.1


def sse_events(body: str) -> list[dict[str, Any]]:
    return [json.loads(line[len("data: ") :]) for line in body.splitlines() if line.startswith("data: ")]


async def test_stream_sends_text_deltas_then_the_whole_text(client: AsyncTestClient) -> None:
    response = await transcribe(client, {"stream": "true"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert [e["type"] for e in events] == ["transcript.text.delta"] * 3 + ["transcript.text.done"]
    assert events[0]["delta"] == "alpha alpha."  # the first delta has no leading space
    assert "".join(e["delta"] for e in events[:-1]) == events[-1]["text"] == THREE_SECONDS_TEXT


async def test_engine_failure_mid_stream_is_a_final_error_event(client: AsyncTestClient) -> None:
    engine(client).fail_after = 1
    response = await transcribe(client, {"stream": "true"})
    events = sse_events(response.text)
    assert events[0] == {"type": "transcript.text.delta", "delta": "alpha alpha."}
    assert events[-1]["error"]["code"] == "ENGINE_ERROR"
    assert "secret" not in response.text


async def test_an_engine_failure_mid_stream_is_mapped_as_any_engine_failure(client: AsyncTestClient) -> None:
    fake = engine(client)
    original = fake.transcribe_stream

    async def failing(job: TranscriptionJob) -> AsyncIterator[TranscribedSegment]:
        async for segment in original(job):
            yield segment
            raise EngineFailure("fake-whisper")

    fake.transcribe_stream = failing  # type: ignore[method-assign]
    events = sse_events((await transcribe(client, {"stream": "true"})).text)
    assert events[0] == {"type": "transcript.text.delta", "delta": "alpha alpha."}
    assert events[-1]["error"] == {
        "message": "The engine for model 'fake-whisper' failed to serve the request.",
        "type": "server_error",
        "param": None,
        "code": "ENGINE_ERROR",
    }


async def test_a_file_holding_more_than_it_declares_is_refused_at_the_limit(make_client: AudioClient) -> None:
    client = await make_client(max_duration_s=5.0)
    response = await transcribe(client, audio=lying_mp3(2.0, 60.0), filename="speech.mp3")
    assert error_of(response) == (400, "INVALID_AUDIO_FILE", "file"), response.text
    assert "more than 5 s" in response.json()["error"]["message"]
    streamed = await transcribe(client, {"stream": "true"}, audio=lying_mp3(2.0, 60.0), filename="speech.mp3")
    assert error_of(streamed) == (400, "INVALID_AUDIO_FILE", "file"), streamed.text
    assert not engine(client).jobs


async def test_routes_have_their_operation_ids(client: AsyncTestClient) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    operations = {path: paths[path]["post"]["operationId"] for path in paths if "/audio/trans" in path}
    assert operations == {
        "/v1/audio/transcriptions": "createTranscription",
        "/v1/audio/translations": "createTranslation",
        "/openai/v1/audio/transcriptions": "openaiCreateTranscription",
        "/openai/v1/audio/translations": "openaiCreateTranslation",
    }


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"stream": "true", "response_format": "srt"}, "response_format"),
        ({"response_format": "xml"}, "response_format"),
        ({"response_format": "json", "timestamp_granularities[]": "word"}, "timestamp_granularities"),
        ({"response_format": "verbose_json", "timestamp_granularities[]": "letter"}, "timestamp_granularities[0]"),
        ({"temperature": "1.5"}, "temperature"),
        ({"temperature": "-0.1"}, "temperature"),
        ({"temperature": "warm"}, "temperature"),
        ({"language": "klingon"}, "language"),
        ({"prompt": "x" * 5000}, "prompt"),
        ({"language": "l" * 300}, "language"),
        ({"model": "m" * 300}, "model"),
        (
            {"response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment", "word"]},
            "timestamp_granularities",
        ),
        ({"vad_filter": "maybe"}, "vad_filter"),
        ({"model": "fake-chat"}, "model"),
    ],
)
async def test_bad_fields_are_400s_naming_the_param(
    client: AsyncTestClient, fields: dict[str, str], param: str
) -> None:
    response = await transcribe(client, fields)
    assert error_of(response) == (400, "INVALID_REQUEST_BODY", param), response.text
    assert not engine(client).jobs


async def test_unknown_model_is_404(client: AsyncTestClient) -> None:
    assert error_of(await transcribe(client, {"model": "no-such-model"})) == (404, "MODEL_NOT_FOUND", "model")


async def test_english_only_model_refuses_other_languages_and_translation(client: AsyncTestClient) -> None:
    german = await transcribe(client, {"model": "fake-whisper-en", "language": "de"})
    assert error_of(german) == (400, "INVALID_REQUEST_BODY", "language")
    translate = await transcribe(client, {"model": "fake-whisper-en"}, route="/v1/audio/translations")
    assert error_of(translate) == (400, "INVALID_REQUEST_BODY", "model")


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "audio",
    [
        b"",
        b"this is plain text, not audio at all " * 10,
        png(),  # a media file FFmpeg reads, but without an audio stream
        THREE_SECONDS[:44],  # a WAV header without samples
    ],
    ids=["empty", "text", "image", "header-only"],
)
async def test_files_that_are_not_audio_are_invalid_audio_file(client: AsyncTestClient, audio: bytes) -> None:
    response = await transcribe(client, audio=audio)
    assert error_of(response) == (400, "INVALID_AUDIO_FILE", "file"), response.text
    assert "Traceback" not in response.text and "/" not in response.json()["error"]["message"].replace("m4a", "")


async def test_audio_longer_than_allowed_is_refused(make_client: AudioClient) -> None:
    client = await make_client(max_duration_s=2.0)
    response = await transcribe(client)
    assert error_of(response) == (400, "INVALID_AUDIO_FILE", "file")
    assert "3.0 s" in response.json()["error"]["message"]
    assert (await transcribe(client, audio=tone(1.5))).status_code == 200


async def test_upload_over_the_size_limit_is_413(make_client: AudioClient) -> None:
    client = await make_client(max_upload_bytes=50_000)
    response = await transcribe(client, audio=tone(3.0))  # 96 kB of WAV
    assert error_of(response) == (413, "REQUEST_BODY_TOO_LARGE", "file")
    assert (await transcribe(client, audio=tone(1.0))).status_code == 200


async def test_uploads_beyond_the_app_wide_body_limit_are_accepted(make_client: AudioClient) -> None:
    # The app allows 10 MB bodies; transcription uploads may be as large as audio.max_upload_bytes.
    long_tone = tone(400.0)  # 12.8 MB of 16-bit 16 kHz WAV
    assert len(long_tone) > Settings().limits.max_body_bytes
    client = await make_client()
    response = await transcribe(client, {"response_format": "text"}, audio=long_tone)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"json": {"model": "fake-whisper", "file": "abc"}}, "file"),
        ({"data": {"model": "fake-whisper"}, "files": {"other": ("a.wav", b"x")}}, "file"),
        ({"data": {"model": "fake-whisper", "file": "not a file part"}, "files": {"x": ("a", b"b")}}, "file"),
        ({"files": {"file": ("a.wav", THREE_SECONDS)}}, "model"),
    ],
    ids=["json-body", "no-file", "file-as-text", "no-model"],
)
async def test_malformed_forms_are_400s(client: AsyncTestClient, kwargs: dict[str, Any], param: str) -> None:
    response = await client.post("/openai/v1/audio/transcriptions", **kwargs)
    assert error_of(response) == (400, "INVALID_REQUEST_BODY", param), response.text
