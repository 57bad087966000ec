"""Credits for text, audio and video: reserved at the worst case, settled to what was produced.

The app is the real one (key store, accounts, task runner) over fake engines. Prices are set so
that one credit is one input or output token, one second of speech, or one video frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from engines.base import GenerationStep, SamplingOptions
from schemas.openai.chat import ChatCompletionRequest
from server.app import build_components, create_app
from server.composition import Components
from server.settings import Settings
from tests.fakes import FAKE_SPECS, fake_factory
from tests.fakes_speech import FAIL_WORD, FAKE_SPEECH_SPEC, SECONDS_PER_CHAR, FakeSpeechEngine
from tests.unit.test_video_tasks import TEXT_SPEC, txt2video
from tests.unit.test_video_tasks import factory as video_factory

PRICES = {
    "price_per_1k_input_tokens": 1000.0,
    "price_per_1k_output_tokens": 1000.0,
    "price_per_speech_second": 1.0,
    "price_per_video_frame": 1.0,
    "default_max_tokens": 8,
    "requests_per_hour": 0,
    "requests_per_day": 0,
}
CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}

App = tuple[AsyncTestClient, Components, str, dict[str, str]]


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    settings = msgspec.convert({"data_dir": str(tmp_path), "accounts": PRICES}, Settings)
    factories = {"fake": fake_factory, "fake-speech": FakeSpeechEngine, "fake-video": video_factory}
    state = build_components(settings, [*FAKE_SPECS, FAKE_SPEECH_SPEC, TEXT_SPEC], factories)  # type: ignore[dict-item]
    info, key = state.keystore.create("metered")
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        yield client, state, info.id, {"Authorization": f"Bearer {key}"}


def credits(state: Components, key_id: str) -> float:
    account = state.keystore.account(key_id)
    assert account is not None and account.credits is not None
    return account.credits


def stop_after(state: Components, tokens: int) -> None:
    """The fake chat model ends its answer after ``tokens`` tokens, as on an end-of-sequence."""
    engine = state.scheduler.engine("fake-chat")
    original = engine.generate  # type: ignore[attr-defined]

    async def short(
        prompt: list[int], options: SamplingOptions, request_id: str, *, media: Any = None
    ) -> AsyncIterator[GenerationStep]:
        async for step in original(
            prompt, msgspec.structs.replace(options, max_tokens=tokens), request_id, media=media
        ):
            yield step

    engine.generate = short  # type: ignore[attr-defined]


async def _finished(client: AsyncTestClient, state: Components, task_id: str, auth: dict[str, str]) -> dict[str, Any]:
    for _ in range(500):
        body: dict[str, Any] = (
            await client.get("/v3/async/task-result", params={"task_id": task_id}, headers=auth)
        ).json()
        if body["task"]["status"] in ("TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"):
            await asyncio.sleep(0.02)  # the runner settles right after the store write
            return body
        await asyncio.sleep(0.01)
    raise AssertionError("task did not finish")


async def test_chat_charges_tokens_and_refunds_the_unused_reservation(app: App) -> None:
    client, state, key_id, auth = app
    state.keystore.set_credits(key_id, 100)
    # Without max_tokens the answer is limited to accounts.default_max_tokens, which is reserved.
    open_ended = (await client.post("/v1/chat/completions", json=CHAT, headers=auth)).json()
    usage = open_ended["usage"]
    assert usage["completion_tokens"] == 8
    assert credits(state, key_id) == pytest.approx(100 - usage["total_tokens"])

    state.keystore.set_credits(key_id, 100)
    stop_after(state, 3)
    response = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 20}, headers=auth)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 3
    # Reserved: prompt + 20; kept: prompt + 3.
    assert credits(state, key_id) == pytest.approx(100 - usage["prompt_tokens"] - 3)
    assert state.keystore.open_reservations() == ()

    # The worst case must fit the balance, even when the answer would have been short.
    state.keystore.set_credits(key_id, usage["prompt_tokens"] + 10)
    refused = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 20}, headers=auth)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "BILLING_BALANCE_NOT_ENOUGH"
    assert credits(state, key_id) == usage["prompt_tokens"] + 10


async def test_streamed_chat_cut_by_a_disconnect_pays_for_what_was_sent(app: App) -> None:
    _, state, key_id, _ = app
    state.keystore.set_credits(key_id, 100)
    engine = state.scheduler.engine("fake-chat")
    engine.step_delay = 0.01  # type: ignore[attr-defined]
    request = msgspec.convert({**CHAT, "max_tokens": 40, "stream": True}, ChatCompletionRequest)
    meter = state.accounts.meter(key_id, state.keystore.account(key_id))
    events = await state.text.chat.stream(request, meter)
    prompt_tokens = len(engine.render_chat([{"role": "user", "content": "hi"}]))  # type: ignore[attr-defined]
    assert credits(state, key_id) == 100 - prompt_tokens - 40  # the worst case, reserved up front

    received: list[bytes] = []

    async def client_reads() -> None:
        async for event in events:
            received.append(event)

    reader = asyncio.create_task(client_reads())
    while len(received) < 6:  # the role chunk and five tokens
        await asyncio.sleep(0.005)
    reader.cancel()  # what the streaming response does when the client goes away
    with pytest.raises(asyncio.CancelledError):
        await reader
    tokens = sum(1 for event in received if b'"content":"a"' in event or b'"content":"b"' in event)
    assert 5 <= tokens < 40
    assert credits(state, key_id) == pytest.approx(100 - prompt_tokens - tokens)
    assert state.keystore.open_reservations() == ()


async def test_embeddings_charge_input_tokens(app: App) -> None:
    client, state, key_id, auth = app
    state.keystore.set_credits(key_id, 50)
    body = {"model": "fake-embed", "input": ["hello", "world!"]}
    response = await client.post("/v1/embeddings", json=body, headers=auth)
    assert response.status_code == 200
    assert response.json()["usage"]["prompt_tokens"] == 11
    assert credits(state, key_id) == pytest.approx(50 - 11)
    state.keystore.set_credits(key_id, 5)
    poor = await client.post("/v1/embeddings", json=body, headers=auth)
    assert poor.status_code == 400 and poor.json()["error"]["code"] == "BILLING_BALANCE_NOT_ENOUGH"


async def test_txt2speech_task_charges_seconds_and_a_failed_one_refunds(app: App) -> None:
    client, state, key_id, auth = app
    state.keystore.set_credits(key_id, 100)
    texts = ["Hello there.", "Good night."]
    body = {"request": {"voice_id": "Emily", "language": "en-US", "texts": texts}}
    submitted = await client.post("/v3/async/txt2speech", json=body, headers=auth)
    assert submitted.status_code == 200, submitted.text
    result = await _finished(client, state, submitted.json()["task_id"], auth)
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED"
    spoken = sum(len(text) for text in texts) * SECONDS_PER_CHAR
    assert credits(state, key_id) == pytest.approx(100 - spoken, abs=0.01)

    before = credits(state, key_id)
    failing = {"request": {**body["request"], "texts": [f"Please {FAIL_WORD} now."]}}
    failed = await client.post("/v3/async/txt2speech", json=failing, headers=auth)
    assert (await _finished(client, state, failed.json()["task_id"], auth))["task"]["status"] == "TASK_STATUS_FAILED"
    assert credits(state, key_id) == pytest.approx(before)
    assert state.keystore.open_reservations() == ()


async def test_txt2video_task_charges_frames(app: App) -> None:
    client, state, key_id, auth = app
    state.keystore.set_credits(key_id, 20)
    submitted = await client.post("/v3/async/txt2video", json=txt2video(), headers=auth)
    assert submitted.status_code == 200, submitted.text
    assert (await _finished(client, state, submitted.json()["task_id"], auth))["task"][
        "status"
    ] == "TASK_STATUS_SUCCEED"
    assert credits(state, key_id) == 20 - 5  # 3 + 2 frames
    state.keystore.set_credits(key_id, 4)
    poor = await client.post("/v3/async/txt2video", json=txt2video(), headers=auth)
    assert poor.status_code == 400 and poor.json()["reason"] == "BILLING_BALANCE_NOT_ENOUGH"


async def test_concurrent_chats_never_overdraw(app: App) -> None:
    client, state, key_id, auth = app
    engine = state.scheduler.engine("fake-chat")
    engine.step_delay = 0.002  # type: ignore[attr-defined]
    one = (await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 5}, headers=auth)).json()
    cost = one["usage"]["total_tokens"]
    state.keystore.set_credits(key_id, 4 * cost + cost // 2)
    responses = await asyncio.gather(
        *(client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 5}, headers=auth) for _ in range(10))
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * 4 + [400] * 6
    assert credits(state, key_id) == pytest.approx(cost // 2)
    assert state.keystore.open_reservations() == ()


async def test_unmetered_keys_do_no_key_store_work(app: App) -> None:
    client, state, _, auth = app

    def forbidden(*_: Any, **__: Any) -> Any:
        raise AssertionError("an unmetered request touched the balance")

    state.keystore.reserve = forbidden  # type: ignore[method-assign]
    state.keystore.settle = forbidden  # type: ignore[method-assign]
    response = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 4}, headers=auth)
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 4
