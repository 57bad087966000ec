"""Transcriptions meet admission before any byte of their answer, under a real HTTP server: a
stream on a busy model is a 429/503 with Retry-After, not an error event after a 200; an upload
is decoded only once its request holds the model; a stream's lease is released however its
client leaves. The server runs one request per model at a time, so a lease the test holds
keeps every request waiting."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import server.capabilities.transcription.transcriber as transcriber_module
from engines.audio.decoding import decode_upload
from engines.base import TranscribedSegment, TranscriptionJob
from server.composition import Components
from tests.audio_inputs import tone
from tests.fakes import FAKE_SPECS
from tests.fakes_audio import FAKE_WHISPER_SPEC, FakeWhisperEngine
from tests.unit.serving import serve as serve_app

MODEL = FAKE_WHISPER_SPEC.name
AUDIO = tone(3.0)


class Served:
    def __init__(self, url: str, state: Components) -> None:
        self.url = url
        self.state = state

    @property
    def engine(self) -> FakeWhisperEngine:
        found = self.state.scheduler.engine(MODEL)
        assert isinstance(found, FakeWhisperEngine)
        return found

    def model(self) -> Any:
        return self.state.scheduler.report().models[MODEL]

    async def transcribe(self, client: httpx.AsyncClient, fields: dict[str, str] | None = None) -> httpx.Response:
        data = {"model": MODEL, **(fields or {})}
        files = {"file": ("speech.wav", AUDIO, "application/octet-stream")}
        return await client.post(self.url + "/v1/audio/transcriptions", data=data, files=files, timeout=30)


ServeFactory = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[ServeFactory]:
    """Starts the app under uvicorn with the given `limits` settings, one request per model at a time."""
    async with contextlib.AsyncExitStack() as running:

        async def start(**limits: Any) -> Served:
            url, state = await running.enter_async_context(
                serve_app(
                    tmp_path,
                    specs=[*FAKE_SPECS, FAKE_WHISPER_SPEC],
                    factories={"fake-whisper": FakeWhisperEngine},
                    limits={"max_running_per_model": 1, **limits},
                )
            )
            return Served(url, state)

        yield start


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("limits", "status", "code"),
    [
        ({"max_queue_depth": 0}, 429, "QUEUE_FULL"),
        ({"queue_timeout_s": 0.2}, 503, "SERVICE_NOT_AVAILABLE"),
    ],
    ids=["queue-full", "turn-never-came"],
)
async def test_a_stream_on_a_busy_model_is_refused_with_retry_after(
    serve: ServeFactory, limits: dict[str, Any], status: int, code: str
) -> None:
    served = await serve(**limits)
    async with httpx.AsyncClient() as client:
        async with served.state.scheduler.lease(MODEL):  # another request holds the model
            response = await served.transcribe(client, {"stream": "true"})
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
        assert int(response.headers["retry-after"]) >= 1
        assert not served.engine.jobs
        # Nothing was left holding the model: the next stream runs to its end.
        after = await served.transcribe(client, {"stream": "true"})
        assert after.status_code == 200 and "transcript.text.done" in after.text


async def test_uploads_are_decoded_once_their_request_holds_the_model(
    serve: ServeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = await serve()
    leases_at_decode: list[int] = []

    def noting_leases(*args: Any, **kwargs: Any) -> Any:
        leases_at_decode.append(served.model().leases)
        return decode_upload(*args, **kwargs)

    monkeypatch.setattr(transcriber_module, "decode_upload", noting_leases)
    async with httpx.AsyncClient() as client:
        async with served.state.scheduler.lease(MODEL):
            waiting = [asyncio.create_task(served.transcribe(client, f)) for f in ({}, {"stream": "true"})]
            await wait_for(lambda: served.model().queue_depth == 2)
            await asyncio.sleep(0.1)
            assert leases_at_decode == []  # queued, their uploads still encoded
        responses = await asyncio.wait_for(asyncio.gather(*waiting), 30)
    assert [response.status_code for response in responses] == [200, 200]
    assert leases_at_decode == [1, 1]  # each decoded under its own lease, alone on the model


class _EndlessStream:
    """A transcription stream that sends a segment every few milliseconds until it is stopped."""

    def __init__(self) -> None:
        self.stopped = asyncio.Event()

    async def __call__(self, job: TranscriptionJob) -> AsyncIterator[TranscribedSegment]:
        try:
            index = 0
            while True:
                await asyncio.sleep(0.01)
                yield TranscribedSegment(
                    id=index,
                    seek=0,
                    start=float(index),
                    end=index + 1.0,
                    text=" word",
                    tokens=[],
                    temperature=0.0,
                    avg_logprob=0.0,
                    compression_ratio=1.0,
                    no_speech_prob=0.0,
                )
                index += 1
        finally:
            self.stopped.set()


async def test_a_client_that_leaves_a_stream_releases_its_lease(serve: ServeFactory) -> None:
    served = await serve()
    endless = _EndlessStream()
    served.engine.transcribe_stream = endless  # type: ignore[method-assign]
    data = {"model": MODEL, "stream": "true"}
    files = {"file": ("speech.wav", AUDIO, "application/octet-stream")}
    async with httpx.AsyncClient() as client:
        url = served.url + "/v1/audio/transcriptions"
        async with client.stream("POST", url, data=data, files=files, timeout=30) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    break  # the first delta: now leave
    await asyncio.wait_for(endless.stopped.wait(), 10)
    await wait_for(lambda: served.model().leases == 0)
