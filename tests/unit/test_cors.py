"""Cross-origin browser access: only the origins in http.cors_origins get CORS headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from server.app import create_app
from server.settings import HttpSettings
from tests.unit.conftest import make_state

ALLOWED = "https://app.example.com"
OTHER = "https://elsewhere.example.net"
CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
KEY = {"Authorization": "Bearer customer-key"}


def preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        # What OpenAI's JavaScript SDK sends from a browser.
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os, x-stainless-retry-count",
    }


@asynccontextmanager
async def started(tmp_path: Path, **settings: object) -> AsyncIterator[AsyncTestClient]:
    state = make_state(tmp_path, **settings)
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        yield client


def cors_headers(headers: object) -> set[str]:
    return {name.lower() for name in headers if name.lower().startswith("access-control-")}  # type: ignore[attr-defined]


async def test_no_cors_headers_by_default(tmp_path: Path) -> None:
    async with started(tmp_path, auth={"static_keys": ["customer-key"]}) as client:
        answered = await client.options("/v1/chat/completions", headers=preflight(ALLOWED))
        assert not cors_headers(answered.headers)
        assert answered.status_code == 401  # the route's own answer, without a key
        listed = await client.get("/v1/models", headers={**KEY, "Origin": ALLOWED})
        assert listed.status_code == 200 and not cors_headers(listed.headers)


async def test_a_listed_origin_may_call_and_read(tmp_path: Path) -> None:
    settings = {"auth": {"static_keys": ["customer-key"]}, "http": {"cors_origins": [ALLOWED]}}
    async with started(tmp_path, **settings) as client:
        answered = await client.options("/v1/chat/completions", headers=preflight(ALLOWED))
        assert answered.status_code == 204, answered.text
        assert answered.headers["access-control-allow-origin"] == ALLOWED
        allowed_headers = {h.strip() for h in answered.headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type", "x-stainless-os", "x-stainless-retry-count"} <= allowed_headers
        assert "POST" in answered.headers["access-control-allow-methods"]
        assert answered.headers["access-control-max-age"] == "600"
        # The admin API's methods are allowed too.
        admin = await client.options("/admin/loaded/fake-chat", headers=preflight(ALLOWED, "DELETE"))
        assert admin.status_code == 204 and "DELETE" in admin.headers["access-control-allow-methods"]
        chat = await client.post("/v1/chat/completions", json=CHAT, headers={**KEY, "Origin": ALLOWED})
        assert chat.status_code == 200, chat.text
        assert chat.headers["access-control-allow-origin"] == ALLOWED
        exposed = {h.strip() for h in chat.headers["access-control-expose-headers"].split(",")}
        assert {"x-request-id", "retry-after", "retry-after-ms"} <= exposed
        assert "x-request-id" in chat.headers
        # Errors carry the headers as well, so a page can read why it was refused.
        refused = await client.post("/v1/chat/completions", json=CHAT, headers={"Origin": ALLOWED})
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ALLOWED


async def test_an_unlisted_origin_gets_no_cors_headers(tmp_path: Path) -> None:
    settings = {"auth": {"static_keys": ["customer-key"]}, "http": {"cors_origins": [ALLOWED]}}
    async with started(tmp_path, **settings) as client:
        answered = await client.options("/v1/chat/completions", headers=preflight(OTHER))
        assert not cors_headers(answered.headers)
        # As with CORS off: the route's own answer, in its envelope.
        assert answered.status_code == 401 and answered.json()["error"]["code"] == "MISSING_API_KEY"
        listed = await client.get("/v1/models", headers={**KEY, "Origin": OTHER})
        assert listed.status_code == 200 and not cors_headers(listed.headers)


async def test_an_open_server_answers_preflights_of_listed_origins(tmp_path: Path) -> None:
    # No keys: the Host allowlist and the JSON-only bodies still hold for the real requests.
    async with started(tmp_path, http={"cors_origins": [ALLOWED]}) as client:
        host = {"Host": "127.0.0.1:8000"}
        answered = await client.options("/v1/chat/completions", headers={**preflight(ALLOWED), **host})
        assert answered.status_code == 204 and answered.headers["access-control-allow-origin"] == ALLOWED
        chat = await client.post("/v1/chat/completions", json=CHAT, headers={"Origin": ALLOWED, **host})
        assert chat.status_code == 200 and chat.headers["access-control-allow-origin"] == ALLOWED
        text = await client.post(
            "/v1/chat/completions",
            content=msgspec.json.encode(CHAT),
            headers={"Origin": ALLOWED, "Content-Type": "text/plain", **host},
        )
        assert text.status_code == 415
        rebound = await client.post("/v1/chat/completions", json=CHAT, headers={"Origin": ALLOWED, "Host": "evil.test"})
        assert rebound.status_code == 403


async def test_any_origin(tmp_path: Path) -> None:
    async with started(tmp_path, auth={"static_keys": ["customer-key"]}, http={"cors_origins": ["*"]}) as client:
        answered = await client.options("/v1/embeddings", headers=preflight(OTHER))
        assert answered.status_code == 204 and answered.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("origin", ["app.example.com", "https://app.example.com/", "ftp://x.example", "https://"])
def test_origins_are_checked(origin: str) -> None:
    with pytest.raises(ValueError, match=r"http\.cors_origins"):
        HttpSettings(cors_origins=[origin])
