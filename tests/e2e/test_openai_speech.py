"""POST /audio/speech against a running omniserve with the official openai SDK, on demo-tts."""

from __future__ import annotations

import io
import time

import av
import openai
import pytest

from tests.e2e.conftest import RunningServer

pytestmark = pytest.mark.e2e

TEXT = "Hello from omniserve. This sentence is spoken by a tiny model. Goodbye!"
# The demo model speaks about 70 ms a character, with pauses between sentences.
PLAUSIBLE_S = (0.04 * len(TEXT), 0.15 * len(TEXT))
CONTAINERS = {"mp3": "mp3", "opus": "ogg", "aac": "aac", "flac": "flac", "wav": "wav"}


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(api_key=server.api_key, base_url=server.openai_url, timeout=60, max_retries=0)


def decoded(data: bytes) -> tuple[str, float]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        return container.format.name, sum(frame.samples for frame in container.decode(stream)) / stream.rate


@pytest.mark.parametrize("fmt", list(CONTAINERS))
def test_each_format_decodes_as_itself(client: openai.OpenAI, fmt: str) -> None:
    response = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format=fmt)  # type: ignore[arg-type]
    container, seconds = decoded(response.content)
    assert container == CONTAINERS[fmt]
    assert PLAUSIBLE_S[0] < seconds < PLAUSIBLE_S[1]


def test_pcm_and_mp3_agree_on_duration(client: openai.OpenAI) -> None:
    pcm = client.audio.speech.create(model="tts-1-hd", voice="nova", input=TEXT, response_format="pcm").content
    pcm_seconds = len(pcm) / 2 / 24_000  # raw 16-bit little-endian at 24 kHz
    assert PLAUSIBLE_S[0] < pcm_seconds < PLAUSIBLE_S[1]
    _, mp3_seconds = decoded(client.audio.speech.create(model="tts-1-hd", voice="nova", input=TEXT).content)
    assert mp3_seconds == pytest.approx(pcm_seconds, abs=0.1)


def test_speed_and_voice(client: openai.OpenAI) -> None:
    def seconds(**options: object) -> float:
        response = client.audio.speech.create(model="demo-tts", input=TEXT, response_format="wav", **options)  # type: ignore[arg-type]
        return decoded(response.content)[1]

    assert seconds(voice="echo", speed=0.5) > 1.6 * seconds(voice="echo")
    # The same request gives the same audio; instructions are accepted and change nothing.
    first = client.audio.speech.create(model="tts-1", voice="fable", input=TEXT, response_format="flac").content
    again = client.audio.speech.create(
        model="tts-1", voice="fable", input=TEXT, response_format="flac", instructions="Speak warmly."
    ).content
    assert first == again


def test_streaming_response_arrives_in_pieces(client: openai.OpenAI, server: RunningServer) -> None:
    text = " ".join(f"Sentence number {n} is here." for n in range(12))
    started = time.monotonic()
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="shimmer", input=text, response_format="pcm"
    ) as response:
        assert response.headers["content-type"] == "audio/pcm"
        assert "content-length" not in response.headers
        arrivals = []
        data = b""
        for chunk in response.iter_bytes():
            arrivals.append(time.monotonic() - started)
            data += chunk
    assert len(arrivals) >= 3
    # The first audio arrived well before the last: the body streamed as it was spoken.
    assert arrivals[0] < 0.7 * arrivals[-1]
    assert len(data) / 2 / 24_000 > 0.04 * len(text)


@pytest.mark.parametrize(
    ("options", "status", "param"),
    [
        ({"voice": "nobody"}, 400, "voice"),
        ({"input": ""}, 400, "input"),
        ({"input": "x" * 4097}, 400, "input"),
        ({"speed": 5.0}, 400, "speed"),
        ({"response_format": "ogg"}, 400, "response_format"),
        ({"model": "no-such-model"}, 404, "model"),
        ({"model": "demo-sd"}, 400, "model"),
    ],
)
def test_bad_input(client: openai.OpenAI, options: dict[str, object], status: int, param: str) -> None:
    request = {"model": "tts-1", "voice": "alloy", "input": "Hello.", **options}
    with pytest.raises(openai.APIStatusError) as raised:
        client.audio.speech.create(**request)  # type: ignore[arg-type]
    assert raised.value.status_code == status
    error = raised.value.body
    assert isinstance(error, dict) and error["param"] == param
    assert error["code"] == ("MODEL_NOT_FOUND" if status == 404 else "INVALID_REQUEST_BODY")
