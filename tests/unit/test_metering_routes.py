"""Credits on the synchronous OpenAI routes: completions, rerank and score, speech, transcriptions.

The app is the real one (key store, accounts) over fake engines whose output is known in
advance: the text engine reads one token per character and writes "ab..." one token a step,
the score engine counts the characters of each pair, the speech engine speaks
SECONDS_PER_CHAR a character, the transcription engine takes the decoded samples. Prices,
texts and audio lengths are chosen so that every balance below is exact in binary floating
point, and compared with ``==``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.exceptions import LitestarException
from litestar.testing import AsyncTestClient

from engines.base import GenerationStep, SamplingOptions, TranscriptionJob, TranscriptionResult
from schemas.openai.completions import CompletionRequest
from server.accounts import speech_seconds_bound
from server.app import build_components, create_app
from server.composition import Components
from server.settings import Settings
from tests.audio_inputs import lying_mp3, tone
from tests.fakes import FAKE_SPECS, FakeTextEngine, fake_factory
from tests.fakes_audio import FAKE_WHISPER_SPEC, FakeWhisperEngine
from tests.fakes_audio import SAMPLE_RATE as WHISPER_RATE
from tests.fakes_speech import FAIL_WORD, FAKE_SPEECH_SPEC, SECONDS_PER_CHAR, FakeSpeechEngine
from tests.fakes_speech import SAMPLE_RATE as SPEECH_RATE

INPUT_TOKEN = 1.0  # credits per prompt token
OUTPUT_TOKEN = 2.0  # credits per generated token
SPEECH_SECOND = 4.0
TRANSCRIPTION_SECOND = 2.0
DEFAULT_MAX_TOKENS = 8
PRICES = {
    "price_per_1k_input_tokens": INPUT_TOKEN * 1000,
    "price_per_1k_output_tokens": OUTPUT_TOKEN * 1000,
    "price_per_speech_second": SPEECH_SECOND,
    "price_per_transcription_second": TRANSCRIPTION_SECOND,
    "default_max_tokens": DEFAULT_MAX_TOKENS,
    "requests_per_hour": 0,
    "requests_per_day": 0,
}
PROMPT = "hello"  # five prompt tokens for the fake text engine
# Two sentences of 25 characters: half a second of speech each at speed 1.
SENTENCES = ["Good morning to you, Sam.", "Good night, sweet prince."]
SPEECH = {"model": "tts-1", "input": " ".join(SENTENCES), "voice": "alloy", "response_format": "wav"}
AUDIO_SECONDS = 3.0
AUDIO = tone(AUDIO_SECONDS)


@dataclass
class Metered:
    client: AsyncTestClient
    state: Components
    key_id: str
    auth: dict[str, str]
    data_dir: Path

    def credits(self) -> float:
        account = self.state.keystore.account(self.key_id)
        assert account is not None and account.credits is not None
        return account.credits

    def set_credits(self, amount: float) -> None:
        self.state.keystore.set_credits(self.key_id, amount)

    def charges(self) -> list[tuple[float, str]]:
        """Every charge row of the key, oldest first: (amount kept or refunded, state)."""
        with sqlite3.connect(self.data_dir / "keys.sqlite3") as db:
            rows = db.execute(
                "SELECT amount, state FROM charges WHERE key_id = ? ORDER BY created_at, rowid", (self.key_id,)
            ).fetchall()
        return [(float(amount), str(state)) for amount, state in rows]


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[Metered]:
    settings = msgspec.convert({"data_dir": str(tmp_path), "accounts": PRICES}, Settings)
    specs = [*FAKE_SPECS, FAKE_SPEECH_SPEC, FAKE_WHISPER_SPEC]
    factories = {"fake": fake_factory, "fake-speech": FakeSpeechEngine, "fake-whisper": FakeWhisperEngine}
    state = build_components(settings, specs, factories)  # type: ignore[arg-type]
    info, key = state.keystore.create("metered")
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        yield Metered(client, state, info.id, {"Authorization": f"Bearer {key}"}, tmp_path)


def text_engine(app: Metered) -> FakeTextEngine:
    engine = app.state.scheduler.engine("fake-chat")
    assert isinstance(engine, FakeTextEngine)
    return engine


def stop_after(app: Metered, tokens: int) -> None:
    """The fake text model ends every answer after ``tokens`` tokens, as on an end-of-sequence."""
    engine = text_engine(app)
    original = engine.generate

    async def short(
        prompt: list[int], options: SamplingOptions, request_id: str, *, media: Any = None
    ) -> AsyncIterator[GenerationStep]:
        async for step in original(
            prompt, msgspec.structs.replace(options, max_tokens=tokens), request_id, media=media
        ):
            yield step

    engine.generate = short  # type: ignore[method-assign, assignment]


def refused(response: Any, balance: float, app: Metered) -> None:
    """The OpenAI envelope's answer to a short balance, and the balance left as it was."""
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "BILLING_BALANCE_NOT_ENOUGH"
    assert error["type"] == "invalid_request_error"
    assert app.credits() == balance
    assert app.state.keystore.open_reservations() == ()


def sse_data(body: str) -> list[dict[str, Any]]:
    return [json.loads(line[len("data: ") :]) for line in body.splitlines() if line.startswith("data: {")]


# /v1/completions


async def test_completion_charges_prompt_and_generated_tokens_and_refunds_the_rest(app: Metered) -> None:
    prompt_tokens = len(PROMPT)
    worst = prompt_tokens * INPUT_TOKEN + 20 * OUTPUT_TOKEN  # reserved: the prompt and max_tokens
    app.set_credits(worst)  # exactly the worst case is enough
    stop_after(app, 3)
    body = {"model": "fake-chat", "prompt": PROMPT, "max_tokens": 20}
    response = await app.client.post("/v1/completions", json=body, headers=app.auth)
    assert response.status_code == 200, response.text
    completion = response.json()
    assert completion["choices"][0]["text"] == "aba"
    assert completion["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    used = prompt_tokens * INPUT_TOKEN + 3 * OUTPUT_TOKEN
    assert app.credits() == worst - used  # the 17 tokens not generated come back
    assert app.charges() == [(used, "committed")]
    assert app.state.keystore.open_reservations() == ()


async def test_completion_reserves_every_choice_of_every_prompt(app: Metered) -> None:
    prompts = ["hello", "hi"]
    body = {"model": "fake-chat", "prompt": prompts, "n": 2, "max_tokens": 4}
    choices = len(prompts) * 2
    cost = sum(len(p) for p in prompts) * INPUT_TOKEN + choices * 4 * OUTPUT_TOKEN
    app.set_credits(cost - 1)
    refused(await app.client.post("/v1/completions", json=body, headers=app.auth), cost - 1, app)

    app.set_credits(cost)
    response = await app.client.post("/v1/completions", json=body, headers=app.auth)
    assert response.status_code == 200, response.text
    assert [choice["text"] for choice in response.json()["choices"]] == ["abab"] * choices
    assert app.credits() == 0


async def test_completion_max_tokens_left_out_or_null(app: Metered) -> None:
    # Left out, max_tokens is OpenAI's default of 16; null means "no limit", which a metered
    # key gets as accounts.default_max_tokens.
    for body, tokens in (({}, 16), ({"max_tokens": None}, DEFAULT_MAX_TOKENS)):
        cost = len(PROMPT) * INPUT_TOKEN + tokens * OUTPUT_TOKEN
        app.set_credits(cost)
        request = {"model": "fake-chat", "prompt": PROMPT, **body}
        response = await app.client.post("/v1/completions", json=request, headers=app.auth)
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == tokens
        assert app.credits() == 0


async def test_streamed_completion_charges_what_it_sent(app: Metered) -> None:
    worst = len(PROMPT) * INPUT_TOKEN + 20 * OUTPUT_TOKEN
    body = {
        "model": "fake-chat",
        "prompt": PROMPT,
        "max_tokens": 20,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    app.set_credits(worst - 1)  # refused before the stream begins: a plain error response
    refused(await app.client.post("/v1/completions", json=body, headers=app.auth), worst - 1, app)

    app.set_credits(worst)
    stop_after(app, 3)
    response = await app.client.post("/v1/completions", json=body, headers=app.auth)
    assert response.status_code == 200, response.text
    events = sse_data(response.text)
    assert "".join(choice["text"] for event in events for choice in event["choices"]) == "aba"
    assert events[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert response.text.endswith("data: [DONE]\n\n")
    used = len(PROMPT) * INPUT_TOKEN + 3 * OUTPUT_TOKEN
    assert app.credits() == worst - used
    assert app.charges() == [(used, "committed")]


async def test_streamed_completion_cut_by_the_client_pays_for_what_was_sent(app: Metered) -> None:
    app.set_credits(100)
    text_engine(app).step_delay = 0.01
    request = msgspec.convert(
        {"model": "fake-chat", "prompt": PROMPT, "max_tokens": 40, "stream": True}, CompletionRequest
    )
    meter = app.state.accounts.meter(app.key_id, app.state.keystore.account(app.key_id))
    events = await app.state.text.completions.stream(request, meter)
    assert app.credits() == 100 - len(PROMPT) * INPUT_TOKEN - 40 * OUTPUT_TOKEN  # the worst case, reserved

    received: list[bytes] = []

    async def client_reads() -> None:
        async for event in events:
            received.append(event)

    reader = asyncio.create_task(client_reads())
    for _ in range(1000):
        if len(received) >= 5:
            break
        await asyncio.sleep(0.005)
    reader.cancel()  # what the streaming response does when the client goes away
    with pytest.raises(asyncio.CancelledError):
        await reader
    sent = sum(len(choice["text"]) for event in sse_data(b"".join(received).decode()) for choice in event["choices"])
    assert 5 <= sent < 40
    assert app.credits() == 100 - len(PROMPT) * INPUT_TOKEN - sent * OUTPUT_TOKEN
    assert app.state.keystore.open_reservations() == ()


# /v1/rerank and /v1/score


async def test_rerank_charges_the_input_tokens_the_engine_read(app: Metered) -> None:
    query, documents = "the cat", ["a cat", "the dog sat"]
    # The fake score engine reads every (query, document) pair, one token a character.
    tokens = sum(len(query) + len(document) for document in documents)
    app.set_credits(100)
    body = {"model": "fake-rerank", "query": query, "documents": documents}
    response = await app.client.post("/v1/rerank", json=body, headers=app.auth)
    assert response.status_code == 200, response.text
    assert response.json()["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert app.credits() == 100 - tokens * INPUT_TOKEN  # no output tokens: a score is not generated text
    assert app.charges() == [(tokens * INPUT_TOKEN, "committed")]

    app.set_credits(tokens * INPUT_TOKEN - 1)
    refused(await app.client.post("/v1/rerank", json=body, headers=app.auth), tokens * INPUT_TOKEN - 1, app)


async def test_score_charges_the_input_tokens_the_engine_read(app: Metered) -> None:
    left, right = "a red fox", ["a fox", "red", "blue sky"]
    tokens = sum(len(left) + len(text) for text in right)
    app.set_credits(tokens * INPUT_TOKEN)
    body = {"model": "fake-rerank", "text_1": left, "text_2": right}
    response = await app.client.post("/v1/score", json=body, headers=app.auth)
    assert response.status_code == 200, response.text
    assert response.json()["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert app.credits() == 0
    refused(await app.client.post("/v1/score", json=body, headers=app.auth), 0, app)


# /v1/audio/speech


def spoken_seconds(sentence: str, speed: float = 1.0) -> float:
    """What the fake speech engine produces for one sentence (its samples, at its rate)."""
    return int(len(sentence) * SECONDS_PER_CHAR / speed * SPEECH_RATE) / SPEECH_RATE


async def test_speech_charges_the_seconds_spoken(app: Metered) -> None:
    reserved = SPEECH_SECOND * speech_seconds_bound(SPEECH["input"], 1.0)
    spoken = sum(spoken_seconds(sentence) for sentence in SENTENCES)
    assert spoken == 1.0 and reserved > SPEECH_SECOND * spoken
    app.set_credits(reserved)
    response = await app.client.post("/v1/audio/speech", json=SPEECH, headers=app.auth)
    assert response.status_code == 200, response.text
    assert app.credits() == reserved - SPEECH_SECOND * spoken
    assert app.charges() == [(SPEECH_SECOND * spoken, "committed")]

    # At double speed the same text is half as long, and so is the charge.
    app.set_credits(100)
    fast = await app.client.post("/v1/audio/speech", json={**SPEECH, "speed": 2.0}, headers=app.auth)
    assert fast.status_code == 200, fast.text
    assert app.credits() == 100 - SPEECH_SECOND * sum(spoken_seconds(s, 2.0) for s in SENTENCES)


async def test_speech_refused_for_its_reservation_does_no_work(app: Metered) -> None:
    engine = app.state.scheduler.engine("tts-1")
    assert isinstance(engine, FakeSpeechEngine)
    short = SPEECH_SECOND * speech_seconds_bound(SPEECH["input"], 1.0) - 0.5
    app.set_credits(short)
    refused(await app.client.post("/v1/audio/speech", json=SPEECH, headers=app.auth), short, app)
    assert engine.jobs == []


async def test_failed_speech_is_refunded(app: Metered) -> None:
    app.set_credits(100)
    failing = {**SPEECH, "input": f"Please {FAIL_WORD} now."}
    response = await app.client.post("/v1/audio/speech", json=failing, headers=app.auth)
    assert response.status_code == 500
    assert app.credits() == 100
    assert [state for _, state in app.charges()] == ["refunded"]
    assert app.state.keystore.open_reservations() == ()


async def test_speech_failing_after_its_first_sentence_is_refunded(app: Metered) -> None:
    app.set_credits(100)
    failing = {**SPEECH, "input": f"{SENTENCES[0]} Then {FAIL_WORD}."}
    # The first sentence's audio has gone out: the failure can only break the response off.
    with pytest.raises(LitestarException, match="after response started"):
        await app.client.post("/v1/audio/speech", json=failing, headers=app.auth)
    assert app.credits() == 100
    assert app.state.keystore.open_reservations() == ()


# /v1/audio/transcriptions and /v1/audio/translations


def whisper(app: Metered) -> FakeWhisperEngine:
    engine = app.state.scheduler.engine("fake-whisper")
    assert isinstance(engine, FakeWhisperEngine)
    return engine


async def upload(app: Metered, route: str, fields: dict[str, str] | None = None) -> Any:
    data = {"model": "fake-whisper", **(fields or {})}
    files = {"file": ("speech.wav", AUDIO, "application/octet-stream")}
    return await app.client.post(f"/v1/audio/{route}", data=data, files=files, headers=app.auth)


@pytest.mark.parametrize("route", ["transcriptions", "translations"])
async def test_speech_to_text_charges_the_seconds_of_input(app: Metered, route: str) -> None:
    app.set_credits(100)
    response = await upload(app, route)
    assert response.status_code == 200, response.text
    seconds = len(whisper(app).jobs[-1].audio) / WHISPER_RATE
    assert seconds == AUDIO_SECONDS
    assert response.json()["usage"] == {"type": "duration", "seconds": seconds}
    assert app.credits() == 100 - TRANSCRIPTION_SECOND * seconds
    assert app.charges() == [(TRANSCRIPTION_SECOND * seconds, "committed")]

    short = TRANSCRIPTION_SECOND * AUDIO_SECONDS - 0.5
    app.set_credits(short)
    refused(await upload(app, route), short, app)
    assert len(whisper(app).jobs) == 1  # refused before the engine


async def test_streamed_transcription_charges_the_seconds_of_input(app: Metered) -> None:
    app.set_credits(100)
    response = await upload(app, "transcriptions", {"stream": "true"})
    assert response.status_code == 200, response.text
    assert sse_data(response.text)[-1]["type"] == "transcript.text.done"
    assert app.credits() == 100 - TRANSCRIPTION_SECOND * AUDIO_SECONDS
    assert app.charges() == [(TRANSCRIPTION_SECOND * AUDIO_SECONDS, "committed")]


async def test_streamed_transcription_refused_before_the_stream_begins(app: Metered) -> None:
    short = TRANSCRIPTION_SECOND * AUDIO_SECONDS - 0.5
    app.set_credits(short)
    refused(await upload(app, "transcriptions", {"stream": "true"}), short, app)
    assert whisper(app).jobs == []


async def test_audio_beyond_what_the_container_declares_is_charged_too(app: Metered) -> None:
    """The reservation before the queue covers the declared 2 s; the 20 s the file holds
    beyond them are reserved once decoded, and charged."""
    app.set_credits(1000)
    files = {"file": ("speech.mp3", lying_mp3(2.0, 20.0), "application/octet-stream")}
    response = await app.client.post(
        "/v1/audio/transcriptions", data={"model": "fake-whisper"}, files=files, headers=app.auth
    )
    assert response.status_code == 200, response.text
    seconds = len(whisper(app).jobs[-1].audio) / WHISPER_RATE
    assert seconds > 21
    assert app.credits() == pytest.approx(1000 - TRANSCRIPTION_SECOND * seconds)
    assert [state for _, state in app.charges()] == ["committed", "committed"]
    assert app.state.keystore.open_reservations() == ()

    # Enough for what the file declares, not for what it holds: refused before the engine.
    enough_for_declared = TRANSCRIPTION_SECOND * 5
    app.set_credits(enough_for_declared)
    refused(
        await app.client.post(
            "/v1/audio/transcriptions", data={"model": "fake-whisper"}, files=files, headers=app.auth
        ),
        enough_for_declared,
        app,
    )
    assert len(whisper(app).jobs) == 1


async def test_failed_transcriptions_are_refunded(app: Metered) -> None:
    app.set_credits(100)
    engine = whisper(app)
    engine.fail_after = 1  # the stream breaks after its first segment
    streamed = await upload(app, "transcriptions", {"stream": "true"})
    assert sse_data(streamed.text)[-1]["error"]["code"] == "ENGINE_ERROR"
    assert app.credits() == 100

    async def broken(job: TranscriptionJob) -> TranscriptionResult:
        raise RuntimeError("decoder crashed")

    engine.transcribe = broken  # type: ignore[method-assign]
    response = await upload(app, "transcriptions")
    assert response.status_code == 500
    assert app.credits() == 100
    assert [state for _, state in app.charges()] == ["refunded", "refunded"]
    assert app.state.keystore.open_reservations() == ()


# Once per request


async def test_each_request_is_one_charge_settled_once(app: Metered) -> None:
    """The key store charges a request id once; a request's id is its own, not the client's
    x-request-id (a trace id): a retry sharing it does the work again and pays again."""
    app.set_credits(100)
    headers = {**app.auth, "x-request-id": "retry-1"}
    body = {"model": "fake-chat", "prompt": PROMPT, "max_tokens": 2}
    cost = len(PROMPT) * INPUT_TOKEN + 2 * OUTPUT_TOKEN
    for _ in range(2):
        response = await app.client.post("/v1/completions", json=body, headers=headers)
        assert response.status_code == 200 and response.headers["x-request-id"] == "retry-1"
    assert app.credits() == 100 - 2 * cost
    assert app.charges() == [(cost, "committed"), (cost, "committed")]
