"""Accounts across the API families: credits, refunds, request windows, subscriptions, keys.

The app is the real one (key store, accounts, task runner) over fake engines.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from schemas.errors import ApiError, ErrorCode
from server.accounts import Accounts
from server.app import create_app
from server.composition import Components
from server.keystore import SqliteKeyStore
from server.settings import AccountSettings
from tests.unit.conftest import make_state

NOVASSIUM = "/api/novassium/v1/generate"
BODY = {"prompt": "a mansion", "style_preset": "photographic", "aspect_ratio": "1:1", "samples": 1}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[tuple[AsyncTestClient, Components, str, str]]:
    state = make_state(tmp_path, vendor={"novassium_steps": 2})
    info, key = state.keystore.create("tester")
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        yield client, state, info.id, key


def novassium(client: AsyncTestClient, key: str, **fields: Any) -> Any:
    body = {**BODY, "output_format": "png", "width": 64, "height": 64, **fields}
    return client.post(NOVASSIUM, json=body, headers={"X-API-Key": key})


def test_migration_adds_account_columns_to_an_old_key_store(tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite3"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, hash BLOB NOT NULL, "
        "created_at REAL NOT NULL, rotated_at REAL, revoked_at REAL)"
    )
    old.commit()
    old.close()
    store = SqliteKeyStore(path)
    info, key = store.create("after-upgrade")
    assert store.verify(key) == info.id
    account = store.account(info.id)
    assert account is not None and account.credits is None and account.subscription_active
    store.close()
    SqliteKeyStore(path).close()  # opening an upgraded store again changes nothing


def test_reserve_is_idempotent_and_never_overdraws(tmp_path: Path) -> None:
    store = SqliteKeyStore(tmp_path / "keys.sqlite3")
    info, _ = store.create("k")
    store.set_credits(info.id, 3)
    assert store.reserve("r1", info.id, 2) == 1
    assert store.reserve("r1", info.id, 2) == 1  # the same request id pays once
    with pytest.raises(Exception, match="balance"):
        store.reserve("r2", info.id, 2)
    assert store.settle("r1", refund=True) and not store.settle("r1", refund=True)
    assert store.account(info.id).credits == 3  # type: ignore[union-attr]


async def test_concurrent_requests_against_ten_credits(app: tuple[AsyncTestClient, Components, str, str]) -> None:
    client, state, key_id, key = app
    state.keystore.set_credits(key_id, 10)
    responses = await asyncio.gather(*(novassium(client, key, seed=i) for i in range(20)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * 10 + [400] * 10
    refused = next(response.json() for response in responses if response.status_code == 400)
    assert refused["success"] is False and refused["code"] == "insufficient_credits"
    assert state.keystore.account(key_id).credits == 0  # type: ignore[union-attr]
    assert min(r.json()["remaining_credits"] for r in responses if r.status_code == 200) == 0


async def test_hourly_window_trips_and_resets(app: tuple[AsyncTestClient, Components, str, str]) -> None:
    client, state, key_id, key = app
    clock = Clock()
    state.accounts.clock = clock
    state.keystore.set_limits(key_id, 3, None)
    for seed in range(3):
        assert (await novassium(client, key, seed=seed)).status_code == 200
        clock.now += 60
    refused = await novassium(client, key, seed=9)
    assert refused.status_code == 429
    assert refused.json() == {
        "success": False,
        "message": "Rate limit exceeded. Please try again later.",
        "code": "rate_limit_exceeded",
    }
    assert int(refused.headers["retry-after"]) == 3600 - 180
    clock.now += 3600 - 180  # the first request leaves the window
    assert (await novassium(client, key, seed=10)).status_code == 200


async def test_each_family_answers_its_own_429(app: tuple[AsyncTestClient, Components, str, str]) -> None:
    client, state, key_id, key = app
    state.keystore.set_limits(key_id, 1, None)  # a key's own limit holds in every family, each counted apart
    auth = {"Authorization": f"Bearer {key}"}
    image = {"model": "fake-sd", "prompt": "x", "size": "128x128", "steps": 1, "response_format": "b64_json"}
    assert (await client.post("/v1/images/generations", json=image, headers=auth)).status_code == 200
    openai = await client.post("/v1/images/generations", json=image, headers=auth)
    assert openai.status_code == 429 and openai.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert "retry-after" in openai.headers
    # /openai/v1 is the same family as /v1: the same window.
    assert (await client.post("/openai/v1/images/generations", json=image, headers=auth)).status_code == 429
    v3_body = {"request": {"model_name": "fake-sd", "prompt": "x", "width": 128, "height": 128, "steps": 1}}
    assert (await client.post("/v3/async/txt2img", json=v3_body, headers=auth)).status_code == 200
    v3 = await client.post("/v3/async/txt2img", json=v3_body, headers=auth)
    assert v3.status_code == 429 and v3.json()["reason"] == "RATE_LIMIT_EXCEEDED"
    sd_body = {"key": key, "prompt": "x", "num_inference_steps": 1}
    assert (await client.post("/api/v3/text2img", json=sd_body)).status_code == 200
    sd = await client.post("/api/v3/text2img", json={**sd_body, "prompt": "y"})
    assert sd.status_code == 429 and sd.json()["message"] == "Rate limit exceeded"
    # Polling and listing are not work: they use no window.
    assert (await client.get("/v3/user", headers=auth)).status_code == 200


def test_default_windows_hold_only_on_novassium(tmp_path: Path) -> None:
    store = SqliteKeyStore(tmp_path / "keys.sqlite3")
    info, _ = store.create("k")
    accounts = Accounts(store, AccountSettings(), clock=Clock())
    for _ in range(150):  # past Novassium's 100 an hour: no limit on the other families
        for family in ("openai", "v3", "sdapi"):
            accounts.admit(info.id, family)
    for _ in range(100):
        accounts.admit(info.id, "novassium")
    with pytest.raises(ApiError) as refused:
        accounts.admit(info.id, "novassium")
    assert refused.value.code is ErrorCode.RATE_LIMIT_EXCEEDED and "hourly" in str(refused.value)
    store.close()


def test_each_familys_windows_come_from_settings_and_a_keys_own_limits_win(tmp_path: Path) -> None:
    store = SqliteKeyStore(tmp_path / "keys.sqlite3")
    first, _ = store.create("first")
    second, _ = store.create("second")
    windows = {"openai": {"requests_per_hour": 2}, "v3": {"requests_per_day": 1}, "novassium": {"requests_per_hour": 0}}
    settings = msgspec.convert({"windows": windows}, AccountSettings)
    clock = Clock()
    accounts = Accounts(store, settings, clock=clock)
    accounts.admit(first.id, "openai")
    accounts.admit(first.id, "openai")
    with pytest.raises(ApiError):
        accounts.admit(first.id, "openai")
    accounts.admit(second.id, "openai")  # each key its own windows
    accounts.admit(first.id, "v3")
    with pytest.raises(ApiError, match="daily"):
        accounts.admit(first.id, "v3")
    for _ in range(200):  # hour off, day still Novassium's 2,400
        accounts.admit(first.id, "novassium")
    clock.now += 3600
    accounts.admit(first.id, "openai")  # the hour has passed
    store.set_limits(second.id, 0, None)  # the key's own "no hourly limit" overrides the family's
    for _ in range(5):
        accounts.admit(second.id, "openai")
    store.close()


async def test_v3_task_charges_per_image_and_a_failed_task_refunds(
    app: tuple[AsyncTestClient, Components, str, str],
) -> None:
    client, state, key_id, key = app
    auth = {"Authorization": f"Bearer {key}"}
    state.keystore.set_credits(key_id, 5)
    body = {"request": {"model_name": "fake-sd", "prompt": "x", "width": 128, "height": 128, "steps": 1}}
    ok = await client.post(
        "/v3/async/txt2img", json={**body, "request": {**body["request"], "image_num": 2}}, headers=auth
    )
    assert await _finished(state, ok.json()["task_id"]) == "TASK_STATUS_SUCCEED"
    assert (await client.get("/v3/user", headers=auth)).json()["credit_balance"] == 3

    engine = state.scheduler.engine("fake-sd")

    async def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("out of memory")

    engine.generate = broken  # type: ignore[attr-defined]
    failed = await client.post("/v3/async/txt2img", json=body, headers=auth)
    assert await _finished(state, failed.json()["task_id"]) == "TASK_STATUS_FAILED"
    assert state.keystore.account(key_id).credits == 3  # type: ignore[union-attr]
    # A failed synchronous generation is refunded too.
    assert (await novassium(client, key)).status_code == 500
    assert state.keystore.account(key_id).credits == 3  # type: ignore[union-attr]

    state.keystore.set_credits(key_id, 0)
    poor = await client.post("/v3/async/txt2img", json=body, headers=auth)
    assert poor.status_code == 400 and poor.json()["reason"] == "BILLING_BALANCE_NOT_ENOUGH"


async def _finished(state: Components, task_id: str) -> str:
    for _ in range(500):
        task = await state.task_store.get(task_id)
        if task is not None and task.status.finished:
            await asyncio.sleep(0.01)  # the runner settles right after the store write
            return task.status.value
        await asyncio.sleep(0.01)
    raise AssertionError("task did not finish")


async def test_rotation_deactivation_and_open_mode(app: tuple[AsyncTestClient, Components, str, str]) -> None:
    client, state, key_id, key = app
    new_key = state.keystore.rotate(key_id)
    old = await novassium(client, key)
    assert old.status_code == 403 and old.json()["code"] == "invalid_api_key"
    assert (await novassium(client, new_key)).status_code == 200
    state.keystore.set_subscription(key_id, False)
    inactive = await novassium(client, new_key)
    assert inactive.status_code == 403 and inactive.json()["code"] == "no_active_subscription"
    listed = await client.get("/v1/models", headers={"Authorization": f"Bearer {new_key}"})
    assert listed.status_code == 403 and listed.json()["error"]["code"] == "API_NOT_ALLOWED"


async def test_open_server_does_no_accounting(client: AsyncTestClient) -> None:
    response = await client.post(NOVASSIUM, json={**BODY, "output_format": "webp", "width": 64, "height": 64})
    assert response.status_code == 200 and response.json()["remaining_credits"] is None
    assert (await client.get("/v3/user")).json()["credit_balance"] is None


def test_cli_account_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.cli import main

    monkeypatch.setenv("OMNISERVE_DATA_DIR", str(tmp_path))
    assert main(["keys", "create", "shop"]) == 0
    key_id = capsys.readouterr().out.split()[1]
    assert main(["keys", "credit", key_id, "--add", "5"]) == 0
    assert main(["keys", "credit", key_id, "--add", "2.5"]) == 0
    assert main(["keys", "limits", key_id, "--hour", "10", "--day", "0"]) == 0
    assert main(["keys", "deactivate", key_id]) == 0
    assert main(["keys", "list"]) == 0
    out = capsys.readouterr().out
    assert "7.5 credits" in out and "10 per hour, unlimited per day" in out and "inactive" in out
    store = SqliteKeyStore(tmp_path / "keys.sqlite3")
    account = store.account(key_id)
    store.close()
    assert account is not None and account.credits == 7.5 and account.hour_limit == 10 and account.day_limit == 0
    assert not account.subscription_active
    assert main(["keys", "credit", "missing", "--set", "1"]) == 1


async def test_openai_images_are_charged_per_image(app: tuple[AsyncTestClient, Components, str, str]) -> None:
    client, state, key_id, key = app
    state.keystore.set_credits(key_id, 3)
    auth = {"Authorization": f"Bearer {key}"}
    image = {"model": "fake-sd", "prompt": "x", "size": "128x128", "steps": 1, "n": 2, "response_format": "b64_json"}
    assert (await client.post("/v1/images/generations", json=image, headers=auth)).status_code == 200
    short = await client.post("/v1/images/generations", json=image, headers=auth)
    assert short.status_code == 400 and short.json()["error"]["code"] == "BILLING_BALANCE_NOT_ENOUGH"
    assert state.keystore.account(key_id).credits == 1  # type: ignore[union-attr]
