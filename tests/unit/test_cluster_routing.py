"""Two replicas on one redis-server, each running part of the fake catalog: a request for a model
that runs only on the other is refused naming where it runs (or forwarded there, with
cluster.proxy_to_peers), a task for a model that no live replica runs is not queued, and the
model lists show what some live replica runs. The apps run under uvicorn on loopback ports, so
each replica reaches the other at the URL it advertises."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from server.cluster import RedisCluster, Replica
from server.cluster_proxy import PROXIED_HEADER
from server.composition import Components
from tests.redis_server import RedisServer, redis_server
from tests.unit.serving import free_port, serve

KEYS = {"static_keys": ["customer-key"], "static_admin_keys": ["admin-key"]}
CUSTOMER = {"Authorization": "Bearer customer-key"}
ADMIN = {"Authorization": "Bearer admin-key"}
CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}
TXT2IMG = {"request": {"model_name": "fake-sd", "prompt": "a barn", "width": 128, "height": 128, "steps": 2}}
DEADLINE_S = 15.0
LEASE_S = 5.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as server:
        yield server


@asynccontextmanager
async def replica(
    tmp_path: Path, store: RedisServer, name: str, serves: list[str], **cluster: object
) -> AsyncIterator[tuple[str, Components]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    options = {"serve": serves, "advertise_url": url, "heartbeat_s": 0.2, "lease_s": LEASE_S, **cluster}
    async with serve(tmp_path / name, port=port, store_url=store.url, auth=KEYS, cluster=options) as started:
        yield started


async def until(condition: Callable[[], bool]) -> None:
    """Wait for the view's next beats; a bound, not a measure."""
    async with asyncio.timeout(DEADLINE_S):
        while not condition():
            await asyncio.sleep(0.05)


def sees(state: Components, model: str, url: str) -> Callable[[], bool]:
    return lambda: url in [peer.url for peer in state.cluster.serving(model)]


def sse_events(text: str) -> list[dict[str, Any] | str]:
    events: list[dict[str, Any] | str] = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def streamed_text(events: list[dict[str, Any] | str]) -> str:
    return "".join(
        event["choices"][0]["delta"].get("content") or ""
        for event in events
        if isinstance(event, dict) and event["choices"]
    )


async def test_requests_for_a_model_run_elsewhere_are_refused_naming_where(tmp_path: Path, store: RedisServer) -> None:
    async with (
        replica(tmp_path, store, "a", ["fake-embed"]) as (a_url, a),
        replica(tmp_path, store, "b", ["fake-chat-alias"]) as (b_url, _),
        httpx.AsyncClient(headers=CUSTOMER, timeout=30) as client,
    ):
        await until(sees(a, "fake-chat", b_url))

        chat = await client.post(f"{a_url}/v1/chat/completions", json=CHAT)
        assert chat.status_code == 404, chat.text
        error = chat.json()["error"]
        assert error["code"] == "MODEL_NOT_FOUND" and error["param"] == "model"
        assert error["message"] == f"The model 'fake-chat' is not served by this server; it is served at {b_url}."
        alias = await client.post(f"{a_url}/v1/chat/completions", json={**CHAT, "model": "fake-chat-alias"})
        assert alias.status_code == 404 and b_url in alias.json()["error"]["message"]
        # Anthropic's envelope, the same refusal.
        anthropic_body = {"model": "fake-chat", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        messages = await client.post(f"{a_url}/v1/messages", json=anthropic_body)
        assert messages.status_code == 404, messages.text
        assert messages.json()["error"]["type"] == "not_found_error"
        assert b_url in messages.json()["error"]["message"]

        # Where the model runs, it runs; what runs here, runs here.
        assert (await client.post(f"{b_url}/v1/chat/completions", json=CHAT)).status_code == 200
        embedded = await client.post(f"{a_url}/v1/embeddings", json={"model": "fake-embed", "input": "hi"})
        assert embedded.status_code == 200, embedded.text

        # No live replica runs fake-sd: a synchronous request and a task both 503, to retry.
        image = await client.post(f"{a_url}/v1/images/generations", json={"model": "fake-sd", "prompt": "a barn"})
        assert image.status_code == 503, image.text
        assert image.json()["error"]["code"] == "SERVICE_NOT_AVAILABLE"
        assert image.headers["Retry-After"] == str(round(LEASE_S))
        task = await client.post(f"{a_url}/v3/async/txt2img", json=TXT2IMG)
        assert task.status_code == 503, task.text
        assert task.json()["reason"] == "SERVICE_NOT_AVAILABLE"
        assert "No live server runs the model 'fake-sd'" in task.json()["message"]
        assert task.headers["Retry-After"] == str(round(LEASE_S))


async def test_model_lists_show_what_some_live_replica_runs(tmp_path: Path, store: RedisServer) -> None:
    async with (
        replica(tmp_path, store, "a", ["fake-embed"]) as (a_url, a),
        httpx.AsyncClient(headers=CUSTOMER, timeout=30) as client,
    ):
        listed = {card["id"] for card in (await client.get(f"{a_url}/v1/models")).json()["data"]}
        assert listed == {"fake-embed"}
        async with replica(tmp_path, store, "b", ["fake-chat", "fake-sd"]) as (b_url, _):
            await until(sees(a, "fake-sd", b_url))
            listed = {card["id"] for card in (await client.get(f"{a_url}/v1/models")).json()["data"]}
            assert listed == {"fake-embed", "fake-chat", "fake-chat-alias", "fake-sd"}  # never fake-rerank
            assert (await client.get(f"{a_url}/v1/models/fake-chat")).status_code == 200
            v3 = (await client.get(f"{a_url}/v3/model")).json()["models"]
            assert [model["sd_name"] for model in v3 if model["type"]["name"] == "checkpoint"] == ["fake-sd"]

            view = await client.get(f"{a_url}/admin/cluster", headers=ADMIN)
            assert view.status_code == 200, view.text
            replicas = {entry["url"]: entry for entry in view.json()["replicas"]}
            assert replicas.keys() == {a_url, b_url}
            assert replicas[a_url]["this_server"] and not replicas[b_url]["this_server"]
            assert replicas[b_url]["models"] == ["fake-chat", "fake-sd"]
            assert 0 <= replicas[b_url]["heartbeat_age_s"] < LEASE_S
            assert (await client.get(f"{a_url}/admin/cluster")).status_code == 403  # admin keys only
        # b stopped cleanly: its models leave the lists at a's next beat.
        await until(lambda: not a.cluster.serving("fake-sd"))
        listed = {card["id"] for card in (await client.get(f"{a_url}/v1/models")).json()["data"]}
        assert listed == {"fake-embed"}
        assert (await client.get(f"{a_url}/v1/models/fake-chat")).status_code == 404
        v3 = (await client.get(f"{a_url}/v3/model")).json()["models"]
        assert [model for model in v3 if model["type"]["name"] == "checkpoint"] == []


async def test_with_proxying_a_streamed_chat_comes_from_the_replica_that_runs_it(
    tmp_path: Path, store: RedisServer
) -> None:
    async with (
        replica(tmp_path, store, "a", ["fake-embed"], proxy_to_peers=True) as (a_url, a),
        replica(tmp_path, store, "b", ["fake-chat"], proxy_to_peers=True) as (b_url, _),
        httpx.AsyncClient(headers=CUSTOMER, timeout=30) as client,
    ):
        await until(sees(a, "fake-chat", b_url))
        direct = await client.post(f"{b_url}/v1/chat/completions", json={**CHAT, "stream": True})
        proxied = await client.post(f"{a_url}/v1/chat/completions", json={**CHAT, "stream": True})
        assert proxied.status_code == 200, proxied.text
        assert proxied.headers["content-type"].startswith("text/event-stream")
        events = sse_events(proxied.text)
        assert events[-1] == "[DONE]"
        assert streamed_text(events) == streamed_text(sse_events(direct.text)) == "ababab"

        whole = await client.post(f"{a_url}/v1/chat/completions", json=CHAT)
        assert whole.status_code == 200, whole.text
        assert whole.json()["choices"][0]["message"]["content"] == "ababab"
        # A request another replica forwarded is never forwarded again: it gets this one's refusal.
        forwarded = await client.post(f"{a_url}/v1/chat/completions", json=CHAT, headers={PROXIED_HEADER: "other"})
        assert forwarded.status_code == 404 and b_url in forwarded.json()["error"]["message"]
        # No live replica runs fake-sd: nothing to forward to, this replica's own refusal.
        image = await client.post(f"{a_url}/v1/images/generations", json={"model": "fake-sd", "prompt": "a barn"})
        assert image.status_code == 503 and image.json()["error"]["code"] == "SERVICE_NOT_AVAILABLE"
        # A refusal of the peer comes back as the peer gave it.
        bad = await client.post(f"{a_url}/v1/chat/completions", json={**CHAT, "max_tokens": -1})
        assert bad.status_code == 400, bad.text


class _Peer:
    """A stand-in replica: records what reaches it, and answers in two chunks, the second only
    once the test has seen the first."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.target = ""
        self.body = b""
        self.first_seen = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.headers = {key.decode(): value.decode() for key, value in scope["headers"]}
        self.target = f"{scope['path']}?{scope['query_string'].decode()}"
        more = True
        while more:
            message = await receive()
            self.body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = [(b"content-type", b"text/event-stream"), (b"x-peer", b"stub")]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": b"data: one\n\n", "more_body": True})
        await self.first_seen.wait()
        await send({"type": "http.response.body", "body": b"data: two\n\n", "more_body": False})


@asynccontextmanager
async def stub_replica(store: RedisServer, url: str, models: tuple[str, ...]) -> AsyncIterator[None]:
    """An entry for a replica at `url` running `models`, as a replica publishes it."""
    entry = Replica(id="stub", url=url, models=models, started_at=0.0, heartbeat_at=0.0)
    cluster = RedisCluster(store.url, entry, heartbeat_s=0.2, lease_s=LEASE_S, timeout_s=0.5)
    await cluster.start()
    try:
        yield
    finally:
        await cluster.stop()


async def test_the_proxy_streams_chunk_by_chunk_and_marks_what_it_forwards(tmp_path: Path, store: RedisServer) -> None:
    peer = _Peer()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(peer, port=port, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    peer_url = f"http://127.0.0.1:{port}"
    try:
        async with (
            stub_replica(store, peer_url, ("fake-chat",)),
            replica(tmp_path, store, "a", ["fake-embed"], proxy_to_peers=True) as (a_url, a),
            httpx.AsyncClient(headers=CUSTOMER, timeout=30) as client,
        ):
            await until(sees(a, "fake-chat", peer_url))
            sent = json.dumps({**CHAT, "stream": True}).encode()
            url = f"{a_url}/v1/chat/completions?trace=1"
            json_body = {"content-type": "application/json"}
            streaming = client.stream("POST", url, content=sent, headers=json_body)
            async with asyncio.timeout(DEADLINE_S), streaming as response:
                assert response.status_code == 201
                assert response.headers["x-peer"] == "stub"
                chunks = response.aiter_raw()
                # The second chunk is sent only after the first arrived here: a proxy that
                # waited for the whole answer would never deliver either.
                assert await anext(chunks) == b"data: one\n\n"
                peer.first_seen.set()
                assert b"".join([chunk async for chunk in chunks]) == b"data: two\n\n"
            assert peer.body == sent and peer.target == "/v1/chat/completions?trace=1"
            assert peer.headers["authorization"] == CUSTOMER["Authorization"]
            assert peer.headers[PROXIED_HEADER] == a.cluster.here.id
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 30)


async def test_a_peer_that_cannot_be_reached_is_a_503(tmp_path: Path, store: RedisServer) -> None:
    dead_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with (
        stub_replica(store, dead_url, ("fake-chat",)),
        replica(tmp_path, store, "a", ["fake-embed"], proxy_to_peers=True) as (a_url, a),
        httpx.AsyncClient(headers=CUSTOMER, timeout=30) as client,
    ):
        await until(sees(a, "fake-chat", dead_url))
        response = await client.post(f"{a_url}/v1/chat/completions", json=CHAT)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "SERVICE_NOT_AVAILABLE"
        assert "Retry-After" in response.headers
