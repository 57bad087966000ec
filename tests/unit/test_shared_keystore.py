"""The app, the CLI and settings on a Redis key store: credits every replica sees, and a Redis
that goes away: 503 with Retry-After, then service again.

A real redis-server on a loopback port, stopped and started again on the same port; it keeps
nothing on disk, so the key is made again once it is back (as an operator restoring it would).
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx
import pytest
from litestar.testing import AsyncTestClient

from server.accounts import Accounts
from server.app import create_app
from server.cli import main
from server.keystore import StoreUnavailable
from server.keystore_redis import RedisKeyStore
from server.settings import AccountSettings
from server.settings_loading import SettingsError, load_settings
from tests.redis_server import redis_server
from tests.unit.conftest import make_state

RECOVERY_DEADLINE_S = 15.0
IMAGES = {"model": "fake-sd", "prompt": "a red barn", "size": "128x128", "steps": 2, "seed": 7}


async def _until_served(client: AsyncTestClient, path: str, key: str) -> httpx.Response:
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    while True:
        response = await client.get(path, headers={"Authorization": f"Bearer {key}"})
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.2)


async def test_a_stopped_store_answers_503_with_retry_after_and_recovers(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        state = make_state(tmp_path / "data", store_url=server.url, store_timeout_s=0.5, store_retry_after_s=1.0)
        _, key = state.keystore.create("app")
        headers = {"Authorization": f"Bearer {key}"}
        async with AsyncTestClient(create_app(state)) as client:
            await state.load_task  # type: ignore[misc]
            assert (await client.get("/v1/models", headers=headers)).status_code == 200

            server.stop()
            openai = await client.get("/v1/models", headers=headers)
            assert openai.status_code == 503, openai.text
            assert openai.headers["Retry-After"] == "1"
            assert openai.json()["error"]["code"] == "SERVICE_NOT_AVAILABLE"
            novita = await client.get("/v3/model", headers=headers)  # every family's envelope
            assert novita.status_code == 503
            assert novita.json()["reason"] == "SERVICE_NOT_AVAILABLE"
            assert "Retry-After" in novita.headers
            novassium = await client.post("/api/novassium/v1/generate", json={}, headers={"X-API-Key": key})
            assert novassium.status_code == 503  # its own key check, before the body
            assert novassium.json()["code"] == "server_error" and "Retry-After" in novassium.headers
            sdapi = await client.post("/api/v3/fetch/abc", json={"key": key})
            assert sdapi.status_code == 503 and "Retry-After" in sdapi.headers

            server.start()
            replica = RedisKeyStore(server.url, replica="operator", timeout_s=2.0, retry_after_s=1.0)
            _, key = replica.create("app")  # the restarted Redis kept nothing
            replica.close()
            recovered = await _until_served(client, "/v1/models", key)
            assert recovered.status_code == 200, recovered.text


async def test_the_server_starts_while_the_store_is_down(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        server.stop()  # its port, with nothing listening
        state = make_state(tmp_path / "data", store_url=server.url, store_timeout_s=0.5, store_retry_after_s=1.0)
        async with AsyncTestClient(create_app(state)) as client:
            await state.load_task  # type: ignore[misc]
            refused = await client.get("/v1/models", headers={"Authorization": "Bearer os-abc.def"})
            assert refused.status_code == 503
            assert (await client.get("/health")).status_code == 200  # probes do not need the store


def test_the_keys_cli_works_on_the_configured_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with redis_server(tmp_path) as server:
        monkeypatch.setenv("OMNISERVE_DATA_DIR", str(tmp_path / "data"))
        monkeypatch.setenv("OMNISERVE_STORE_URL", server.url)
        assert main(["keys", "create", "app"]) == 0
        key = next(line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("key:"))
        store = RedisKeyStore(server.url, replica="check", timeout_s=2.0, retry_after_s=1.0)
        key_id = store.verify(key)
        assert key_id is not None
        assert main(["keys", "credit", key_id, "--add", "5"]) == 0
        account = store.account(key_id)
        assert account is not None and account.credits == 5.0
        assert main(["keys", "revoke", key_id]) == 0
        assert store.verify(key) is None
        store.close()
        assert not (tmp_path / "data" / "keys.sqlite3").exists()  # nothing went to SQLite
        server.stop()
        assert main(["keys", "list"]) == 1
        assert "cannot be reached" in capsys.readouterr().err


async def test_images_are_paid_from_the_balance_every_replica_sees(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        state = make_state(tmp_path / "data", store_url=server.url, accounts={"price_per_image": 1.0})
        other = RedisKeyStore(server.url, replica="other", timeout_s=2.0, retry_after_s=1.0)
        info, key = other.create("app")  # made on another replica
        other.set_credits(info.id, 3.0)
        async with AsyncTestClient(create_app(state)) as client:
            await state.load_task  # type: ignore[misc]
            body = {**IMAGES, "n": 2}
            paid = await client.post("/v1/images/generations", json=body, headers={"Authorization": f"Bearer {key}"})
            assert paid.status_code == 200, paid.text
            account = other.account(info.id)
            assert account is not None and account.credits == 1.0
            short = await client.post("/v1/images/generations", json=body, headers={"Authorization": f"Bearer {key}"})
            assert short.status_code == 400
            assert short.json()["error"]["code"] == "BILLING_BALANCE_NOT_ENOUGH"
            assert other.open_reservations() == () and state.keystore.open_reservations() == ()
        other.close()


def test_store_url_takes_redis_urls_only() -> None:
    assert load_settings(environ={"OMNISERVE_STORE_URL": "rediss://cache.internal:6380/2"}).store_url
    with pytest.raises(SettingsError, match="store_url"):
        load_settings(environ={"OMNISERVE_STORE_URL": "http://cache.internal:6379"})


def test_a_settle_while_the_store_is_down_does_not_fail_the_finished_request(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        store = RedisKeyStore(server.url, replica="first", timeout_s=0.5, retry_after_s=1.0)
        accounts = Accounts(store, AccountSettings())
        info, _ = store.create("app")
        store.set_credits(info.id, 5.0)
        assert accounts.reserve(info.id, "cut-off", 2.0) == 3.0
        server.stop()
        accounts.settle("cut-off", succeeded=True)  # no error for the request that finished
        with pytest.raises(StoreUnavailable) as down:
            accounts.reserve(info.id, "next", 1.0)
        assert down.value.status == 503 and down.value.retry_after is not None
        store.close()


def test_a_store_that_never_answers_is_unavailable_not_a_hang() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        store = RedisKeyStore(f"redis://127.0.0.1:{port}/0", replica="first", timeout_s=0.2, retry_after_s=5.0)
        with pytest.raises(StoreUnavailable) as down:
            store.identify("os-abc.def")
        assert down.value.retry_after == 5.0
        with pytest.raises(StoreUnavailable) as again:  # within the retry period: at once
            store.reserve("r", "abc", 1.0)
        assert again.value.retry_after is not None and again.value.retry_after <= 5.0
        store.close()
