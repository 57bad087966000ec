"""POST /audio/speech and /v3/async/txt2speech through the real app, task store and runner,
with a fake speech engine."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from server.app import build_components, create_app
from server.composition import Components
from server.settings import Settings
from tests.fakes import FAKE_SPECS, fake_factory
from tests.fakes_speech import FAIL_WORD, FAKE_SPEECH_SPEC, SECONDS_PER_CHAR, FakeSpeechEngine
from tests.unit.test_image_tasks import poll

SPEECH = {"model": "tts-1", "input": "Hello there. How are you?", "voice": "alloy"}
TASK = {"request": {"voice_id": "Emily", "language": "en-US", "texts": ["Hello there.", "Good night."]}}


def speech_state(tmp_path: Path, **settings: Any) -> Components:
    config = msgspec.convert({"data_dir": str(tmp_path), **settings}, Settings)
    factories = {"fake": fake_factory, "fake-speech": FakeSpeechEngine}
    return build_components(config, [*FAKE_SPECS, FAKE_SPEECH_SPEC], factories)  # type: ignore[dict-item]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[AsyncTestClient]:
    state = speech_state(tmp_path, audio={"max_speech_chars": 100})
    async with AsyncTestClient(create_app(state)) as test_client:
        await state.load_task  # type: ignore[misc]
        test_client.app_state = state  # type: ignore[attr-defined]
        yield test_client


def seconds(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        return sum(frame.samples for frame in container.decode(stream)) / stream.rate


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [("mp3", "audio/mpeg"), ("opus", "audio/ogg"), ("aac", "audio/aac"), ("flac", "audio/flac"), ("wav", "audio/wav")],
)
async def test_speech_in_each_format(client: AsyncTestClient, fmt: str, media_type: str) -> None:
    response = await client.post("/v1/audio/speech", json={**SPEECH, "response_format": fmt})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    spoken = len("Hello there.") + len("How are you?")
    assert seconds(response.content) == pytest.approx(spoken * SECONDS_PER_CHAR, abs=0.1)


async def test_default_format_is_mp3_and_speed_shortens(client: AsyncTestClient) -> None:
    normal = await client.post("/openai/v1/audio/speech", json=SPEECH)
    fast = await client.post("/openai/v1/audio/speech", json={**SPEECH, "speed": 2.0, "instructions": "cheerful"})
    assert normal.headers["content-type"] == "audio/mpeg"
    assert seconds(fast.content) == pytest.approx(seconds(normal.content) / 2, abs=0.08)


async def test_pcm_is_24_khz_16_bit(client: AsyncTestClient) -> None:
    response = await client.post("/v1/audio/speech", json={**SPEECH, "response_format": "pcm", "voice": {"id": "ava"}})
    assert response.status_code == 200
    spoken = len("Hello there.") + len("How are you?")
    assert len(response.content) / (2 * 24_000) == pytest.approx(spoken * SECONDS_PER_CHAR, abs=0.01)


@pytest.mark.parametrize(
    ("change", "status", "code", "param"),
    [
        ({"input": "   "}, 400, "INVALID_REQUEST_BODY", "input"),
        ({"input": "x" * 101}, 400, "INVALID_REQUEST_BODY", "input"),
        ({"input": "x" * 5000}, 400, "INVALID_REQUEST_BODY", "input"),
        ({"instructions": "Speak slowly. " * 400}, 400, "INVALID_REQUEST_BODY", "instructions"),
        ({"voice": "v" * 300}, 400, "INVALID_REQUEST_BODY", "voice"),
        ({"voice": {"id": "v" * 300}}, 400, "INVALID_REQUEST_BODY", "voice.id"),
        ({"model": "m" * 300}, 400, "INVALID_REQUEST_BODY", "model"),
        ({"input": "!!! ???"}, 400, "INVALID_REQUEST_BODY", "input"),
        ({"voice": "nobody"}, 400, "INVALID_REQUEST_BODY", "voice"),
        ({"response_format": "ogg"}, 400, "INVALID_REQUEST_BODY", "response_format"),
        ({"speed": 0.2}, 400, "INVALID_REQUEST_BODY", "speed"),
        ({"speed": 4.5}, 400, "INVALID_REQUEST_BODY", "speed"),
        ({"stream_format": "sse"}, 400, "INVALID_REQUEST_BODY", "stream_format"),
        ({"model": "no-such-model"}, 404, "MODEL_NOT_FOUND", "model"),
        ({"model": "fake-chat"}, 400, "INVALID_REQUEST_BODY", "model"),
    ],
)
async def test_speech_bad_input(
    client: AsyncTestClient, change: dict[str, Any], status: int, code: str, param: str
) -> None:
    response = await client.post("/v1/audio/speech", json={**SPEECH, **change})
    assert response.status_code == status
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)


async def test_engine_failure_on_the_first_sentence_is_an_error_response(client: AsyncTestClient) -> None:
    response = await client.post("/v1/audio/speech", json={**SPEECH, "input": f"{FAIL_WORD} now."})
    assert response.status_code == 500
    assert response.json()["error"]["message"] == "Internal server error."


async def test_txt2speech_one_audio_per_text(client: AsyncTestClient) -> None:
    body = {**TASK, "extra": {"response_audio_type": "mp3"}}
    submitted = await client.post("/v3/async/txt2speech", json=body)
    assert submitted.status_code == 200
    result = await poll(client, submitted.json()["task_id"])
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED"
    assert result["task"]["task_type"] == "TXT_TO_SPEECH"
    audios = result["audios"]
    assert [audio["audio_type"] for audio in audios] == ["mp3", "mp3"]
    for audio, text in zip(audios, TASK["request"]["texts"], strict=True):  # type: ignore[index]
        downloaded = await client.get(audio["audio_url"].replace("http://testserver.local", ""))
        assert downloaded.headers["content-type"] == "audio/mpeg"
        assert seconds(downloaded.content) == pytest.approx(len(text) * SECONDS_PER_CHAR, abs=0.08)


async def test_txt2speech_defaults_to_wav_and_applies_speed(client: AsyncTestClient) -> None:
    body = {"request": {**TASK["request"], "texts": ["Hello there."], "speed": 2.0, "volume": 1.5}}  # type: ignore[dict-item]
    result = await poll(client, (await client.post("/v3/async/txt2speech", json=body)).json()["task_id"])
    audio = result["audios"][0]
    assert audio["audio_type"] == "wav"
    downloaded = await client.get(audio["audio_url"].replace("http://testserver.local", ""))
    assert downloaded.content[:4] == b"RIFF"
    assert seconds(downloaded.content) == pytest.approx(len("Hello there.") * SECONDS_PER_CHAR / 2, abs=0.02)
    engine = client.app_state.scheduler.engine("fake-tts")  # type: ignore[attr-defined]
    assert engine.jobs[-1].speed == 2.0 and engine.jobs[-1].language == "en-US"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"voice_id": "Nobody"}, "request.voice_id"),
        ({"language": "zh-CN"}, "request.language"),
        ({"texts": []}, "request.texts"),
        ({"texts": ["ok", ""]}, "request.texts"),
        ({"texts": ["x" * 513]}, "request.texts"),
        ({"texts": ["ok", " \n "]}, "request.texts"),
        ({"voice_id": "v" * 300}, "request.voice_id"),
        ({"language": "l" * 300}, "request.language"),
        ({"texts": ["x" * 60, "y" * 60]}, "request.texts"),  # over max_speech_chars in all
        ({"volume": 0.5}, "request.volume"),
        ({"volume": 2.5}, "request.volume"),
        ({"speed": 0.5}, "request.speed"),
        ({"speed": 3.5}, "request.speed"),
    ],
)
async def test_txt2speech_bad_input(client: AsyncTestClient, change: dict[str, Any], param: str) -> None:
    response = await client.post("/v3/async/txt2speech", json={"request": {**TASK["request"], **change}})  # type: ignore[dict-item]
    assert response.status_code == 400
    body = response.json()
    assert (body["reason"], body["metadata"]["param"]) == ("INVALID_REQUEST_BODY", param)


async def test_txt2speech_bad_audio_type_and_missing_field(client: AsyncTestClient) -> None:
    bad_type = await client.post("/v3/async/txt2speech", json={**TASK, "extra": {"response_audio_type": "ogg"}})
    assert bad_type.status_code == 400 and bad_type.json()["metadata"]["param"] == "extra.response_audio_type"
    missing = await client.post("/v3/async/txt2speech", json={"request": {"language": "en-US", "texts": ["hi"]}})
    assert missing.status_code == 400 and missing.json()["metadata"]["param"] == "request.voice_id"


async def test_failed_task_leaves_no_output(client: AsyncTestClient, tmp_path: Path) -> None:
    body = {"request": {**TASK["request"], "texts": ["Fine words.", f"Then {FAIL_WORD}."]}}  # type: ignore[dict-item]
    result = await poll(client, (await client.post("/v3/async/txt2speech", json=body)).json()["task_id"])
    assert result["task"]["status"] == "TASK_STATUS_FAILED"
    assert result["audios"] == []
    outputs = tmp_path / "outputs" / result["task"]["task_id"]
    assert not outputs.exists() or not any(outputs.iterdir())


async def test_txt2speech_off_or_misconfigured(tmp_path: Path) -> None:
    state = speech_state(tmp_path, tasks={"speech_model": ""})
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        response = await client.post("/v3/async/txt2speech", json=TASK)
        assert response.status_code == 404 and response.json()["reason"] == "MODEL_NOT_FOUND"
    with pytest.raises(ValueError, match="speech_model"):
        speech_state(tmp_path / "other", tasks={"speech_model": "fake-chat"})


async def test_routes_have_their_operation_ids(client: AsyncTestClient) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    operations = {path: paths[path]["post"]["operationId"] for path in paths if "speech" in path}
    assert operations == {
        "/v1/audio/speech": "createSpeech",
        "/openai/v1/audio/speech": "openaiCreateSpeech",
        "/v3/async/txt2speech": "txt2speech",
    }
