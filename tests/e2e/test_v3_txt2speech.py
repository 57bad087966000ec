"""Novita /v3/async/txt2speech against a running omniserve: polling, webhooks, errors."""

from __future__ import annotations

import io
from typing import Any

import av
import httpx
import pytest

from tests.e2e.conftest import RunningServer
from tests.e2e.test_v3_images import WebhookReceiver, _auth, _poll, receiver  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e

TEXTS = ["To be or not to be, that is the question.", "Whether tis nobler in the mind to suffer."]


def _submit(server: RunningServer, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v3/async/txt2speech", json=body, headers=_auth(server), timeout=30)


def _decoded(data: bytes) -> tuple[str, float]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        return container.format.name, sum(frame.samples for frame in container.decode(stream)) / stream.rate


def test_polling_gives_one_audio_per_text(server: RunningServer) -> None:
    body = {
        "request": {"voice_id": "Emily", "language": "en-US", "texts": TEXTS, "volume": 1.2, "speed": 1.0},
        "extra": {"response_audio_type": "mp3"},
    }
    response = _submit(server, body)
    assert response.status_code == 200
    result = _poll(server, response.json()["task_id"])
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED"
    assert result["task"]["task_type"] == "TXT_TO_SPEECH"
    assert result["images"] == [] and len(result["audios"]) == len(TEXTS)
    for audio, text in zip(result["audios"], TEXTS, strict=True):
        assert audio["audio_type"] == "mp3" and audio["audio_url_ttl"] == "3600"
        downloaded = httpx.get(audio["audio_url"], timeout=30)  # signed: no key needed
        assert downloaded.status_code == 200 and downloaded.headers["content-type"] == "audio/mpeg"
        container, seconds = _decoded(downloaded.content)
        assert container == "mp3"
        assert 0.04 * len(text) < seconds < 0.15 * len(text)


def test_webhook_delivers_the_wav_result(server: RunningServer, receiver: WebhookReceiver) -> None:  # noqa: F811
    body = {
        "request": {"voice_id": "James", "language": "en-US", "texts": TEXTS[:1], "speed": 2.0},
        "extra": {"webhook": {"url": receiver.url}},
    }
    task_id = _submit(server, body).json()["task_id"]
    events = receiver.wait(1, timeout_s=90)
    assert events, "no webhook event"
    payload = events[0]["payload"]
    assert events[0]["event_type"] == "ASYNC_TASK_RESULT"
    assert payload["task"]["task_id"] == task_id and payload["task"]["status"] == "TASK_STATUS_SUCCEED"
    audio = payload["audios"][0]
    assert audio["audio_type"] == "wav"
    downloaded = httpx.get(audio["audio_url"], timeout=30)
    assert downloaded.headers["content-type"] == "audio/wav"
    container, seconds = _decoded(downloaded.content)
    assert container == "wav"
    assert 0.02 * len(TEXTS[0]) < seconds < 0.08 * len(TEXTS[0])  # speed 2


def test_webhook_test_mode(server: RunningServer, receiver: WebhookReceiver) -> None:  # noqa: F811
    test_mode = {"enabled": True, "return_task_status": "TASK_STATUS_SUCCEED"}
    body = {
        "request": {"voice_id": "Olivia", "language": "en-US", "texts": ["never spoken"]},
        "extra": {"webhook": {"url": receiver.url, "test_mode": test_mode}},
    }
    task_id = _submit(server, body).json()["task_id"]
    event = receiver.wait(1, timeout_s=20)[0]
    assert event["payload"]["task"]["task_id"] == task_id
    assert event["payload"]["task"]["task_type"] == "TXT_TO_SPEECH"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"voice_id": "Nobody"}, "request.voice_id"),
        ({"language": "ja-JP"}, "request.language"),
        ({"texts": []}, "request.texts"),
        ({"texts": ["x" * 513]}, "request.texts"),
        ({"volume": 3.0}, "request.volume"),
        ({"speed": 0.1}, "request.speed"),
    ],
)
def test_bad_input_in_the_v3_envelope(server: RunningServer, change: dict[str, Any], param: str) -> None:
    request = {"voice_id": "Emily", "language": "en-US", "texts": ["Hello."], **change}
    response = _submit(server, {"request": request})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == 400 and body["reason"] == "INVALID_REQUEST_BODY"
    assert body["metadata"]["param"] == param
