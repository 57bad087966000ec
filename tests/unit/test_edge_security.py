"""The HTTP edge: nesting limits, roles, key ids, open-server protections, Host handling,
/metrics access and the OpenAPI document's error responses."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from litestar.testing import AsyncTestClient
from openapi_spec_validator import validate as validate_openapi

from server.app import create_app
from server.cli import main
from server.composition import Components
from server.keystore import SqliteKeyStore
from tests.live_server import live_server
from tests.unit.conftest import make_state

CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
TXT2IMG = {"request": {"model_name": "fake-sd", "prompt": "a barn", "width": 128, "height": 128, "steps": 2}}
SDAPI = {"prompt": "a barn", "width": "128", "height": "128", "samples": "1", "num_inference_steps": "2"}
NOVASSIUM = "/api/novassium/v1/generate"
IMAGES = {"model": "fake-sd", "prompt": "a red barn", "size": "128x128", "steps": 2, "seed": 7}


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


async def started(state: Components) -> AsyncIterator[AsyncTestClient]:
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        yield client


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[tuple[AsyncTestClient, Components]]:
    state = make_state(tmp_path, accounts={"requests_per_hour": 0, "requests_per_day": 0})
    async for client in started(state):
        yield client, state


# Deep JSON


DEEP_ROUTES = [
    ("/v1/chat/completions", "openai"),
    ("/openai/v1/embeddings", "openai"),
    ("/v3/async/txt2img", "novita"),
    ("/api/v3/text2img", "sdapi"),
    (NOVASSIUM, "novassium"),
]


@pytest.mark.parametrize("depth", [490, 978, 20000])
@pytest.mark.parametrize(("path", "family"), DEEP_ROUTES)
async def test_deeply_nested_json_is_a_400_in_each_family(
    client: AsyncTestClient, path: str, family: str, depth: int
) -> None:
    body = '{"model": "fake-chat", "prompt": ' + nested(depth) + "}"
    response = await client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    answer = response.json()
    message = {
        "openai": lambda: answer["error"]["message"],
        "novita": lambda: answer["message"],
        "sdapi": lambda: answer["message"],
        "novassium": lambda: answer["message"],
    }[family]()
    assert "deeper than 128 levels" in message
    if family == "openai":
        assert answer["error"]["code"] == "INVALID_REQUEST_BODY"
    if family == "novita":
        assert answer["reason"] == "INVALID_REQUEST_BODY"


@pytest.mark.parametrize(("path", "_"), DEEP_ROUTES)
async def test_json_at_the_depth_limit_is_decoded_as_usual(client: AsyncTestClient, path: str, _: str) -> None:
    # 128 levels in all: the body object, then objects nested in "extra" (never a 500).
    inner = '{"a": ' * 126 + "1" + "}" * 126
    body = '{"model": "fake-chat", "extra": ' + inner + "}"
    response = await client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code in (200, 400, 404), response.text
    assert "levels" not in response.text


async def test_brackets_inside_strings_do_not_count(client: AsyncTestClient) -> None:
    body = {**TXT2IMG, "request": {**TXT2IMG["request"], "prompt": "[{" * 400}}
    assert (await client.post("/v3/async/txt2img", json=body)).status_code == 200


def _reference_depth(text: str) -> int | None:
    """Nesting by a plain character walk; None where a backslash stands outside a string
    (invalid JSON, which every decoder refuses at that character)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == "\\":
            return None
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def test_nesting_matches_a_character_walk_across_block_edges(monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    from server import request_bodies

    rng = random.Random(7)
    checked = 0
    for _ in range(5000):
        text = "".join(rng.choice('[]{}"\\ab,:') for _ in range(rng.randint(1, 80)))
        expected = _reference_depth(text)
        if expected is None:
            continue
        monkeypatch.setattr(request_bodies, "_BLOCK", rng.choice([1, 2, 3, 7, 1 << 20]))
        assert request_bodies.json_depth(text.encode()) == expected, text
        checked += 1
    assert checked > 500


def test_nesting_is_measured_in_linear_time() -> None:
    import time

    from server.request_bodies import json_depth

    # Escaped quotes in an unterminated string: a backtracking string pattern takes seconds here.
    body = b"[" * 200 + b'"' + b'\\"' * 40000
    started = time.monotonic()
    assert json_depth(body) == 200
    assert time.monotonic() - started < 1.0


async def test_a_form_body_is_not_measured(client: AsyncTestClient) -> None:
    response = await client.post(
        "/v1/audio/transcriptions", files={"file": ("a.wav", b"[" * 5000, "audio/wav")}, data={"model": "x"}
    )
    assert "levels" not in response.text


# Roles and key ids


async def test_admin_routes_take_admin_keys_only(keyed: tuple[AsyncTestClient, Components]) -> None:
    client, state = keyed
    _, customer = state.keystore.create("customer")
    _, admin = state.keystore.create("ops", admin=True)
    refused = await client.get("/admin/scheduler", headers={"Authorization": f"Bearer {customer}"})
    assert refused.status_code == 403
    assert refused.json()["reason"] == "ACCESS_DENY"
    assert (await client.get("/admin/scheduler", headers={"Authorization": f"Bearer {admin}"})).status_code == 200
    # The customer key still works where it should.
    chat = await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {customer}"})
    assert chat.status_code == 200


def test_an_older_key_store_gains_the_role_column(tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite3"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, hash BLOB NOT NULL, "
        "created_at REAL NOT NULL, rotated_at REAL, revoked_at REAL)"
    )
    db.execute("INSERT INTO api_keys VALUES ('abc', 'old', x'00', 1.0, NULL, NULL)")
    db.commit()
    db.close()
    store = SqliteKeyStore(path)
    try:
        (old,) = store.list()
        assert old.id == "abc" and not old.admin
        info, key = store.create("new-ops", admin=True)
        assert store.identify(key) == (info.id, True)
    finally:
        store.close()


def test_cli_creates_admin_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OMNISERVE_DATA_DIR", str(tmp_path))
    assert main(["keys", "create", "ops", "--admin"]) == 0
    assert "role: admin" in capsys.readouterr().out
    assert main(["keys", "create", "app"]) == 0
    assert "role: customer" in capsys.readouterr().out
    assert main(["keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert "admin" in listed and "customer" in listed


async def test_each_static_key_has_its_own_id(tmp_path: Path) -> None:
    state = make_state(tmp_path, auth={"static_keys": ["first-static", "second-static"]})
    async for client in started(state):
        submitted = await client.post("/v3/async/txt2img", json=TXT2IMG, headers={"X-API-Key": "first-static"})
        assert submitted.status_code == 200, submitted.text
        task_id = submitted.json()["task_id"]
        params = {"task_id": task_id}
        mine = await client.get("/v3/async/task-result", params=params, headers={"X-API-Key": "first-static"})
        theirs = await client.get("/v3/async/task-result", params=params, headers={"X-API-Key": "second-static"})
        assert mine.status_code == 200
        assert theirs.status_code == 404
        first = state.authenticator.authenticate("first-static")
        assert first is not None and first.startswith("static-")
        assert first == state.authenticator.authenticate("first-static")  # stable
        assert first != state.authenticator.authenticate("second-static")


async def test_a_task_made_without_a_key_is_not_read_by_a_key_made_later(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    async for client in started(state):
        submitted = await client.post("/v3/async/txt2img", json=TXT2IMG)
        task_id = submitted.json()["task_id"]
        assert (await client.get("/v3/async/task-result", params={"task_id": task_id})).status_code == 200
        _, key = state.keystore.create("later")
        state.authenticator._checked_at = float("-inf")  # see the new key now, not after the cache's TTL
        as_key = await client.get(
            "/v3/async/task-result", params={"task_id": task_id}, headers={"Authorization": f"Bearer {key}"}
        )
        assert as_key.status_code == 404
        assert as_key.json()["reason"] == "TASK_NOT_FOUND"


# An open server and browsers


@pytest.mark.parametrize("host", ["evil.test", "evil.test:8000", "attacker.example"])
async def test_an_open_server_refuses_unknown_hosts(client: AsyncTestClient, host: str) -> None:
    response = await client.post("/v1/chat/completions", json=CHAT, headers={"Host": host})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "ACCESS_DENY"
    v3 = await client.get("/v3/async/task-result", params={"task_id": "x"}, headers={"Host": host})
    assert v3.status_code == 403 and v3.json()["reason"] == "ACCESS_DENY"
    # Probes answer whatever the Host.
    assert (await client.get("/health", headers={"Host": host})).status_code == 200


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1", "[::1]:8000", "127.0.0.2"])
async def test_an_open_server_serves_loopback_hosts(client: AsyncTestClient, host: str) -> None:
    assert (await client.post("/v1/chat/completions", json=CHAT, headers={"Host": host})).status_code == 200


async def test_configured_hosts_are_allowed(tmp_path: Path) -> None:
    state = make_state(tmp_path, auth={"allowed_hosts": ["box.lan"]})
    async for client in started(state):
        assert (await client.get("/v1/models", headers={"Host": "box.lan:8000"})).status_code == 200
        assert (await client.get("/v1/models", headers={"Host": "other.lan"})).status_code == 403


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
@pytest.mark.parametrize(("path", "body"), [("/v1/chat/completions", CHAT), ("/v3/async/txt2img", TXT2IMG)])
async def test_an_open_server_takes_json_routes_as_json_only(
    client: AsyncTestClient, path: str, body: dict[str, Any], content_type: str | None
) -> None:
    import msgspec

    headers = {"Content-Type": content_type} if content_type else {}
    request = client.build_request("POST", path, content=msgspec.json.encode(body), headers=headers)
    if content_type is None:
        request.headers.pop("content-type", None)
    response = await client.send(request)
    assert response.status_code == 415, response.text
    assert "UNSUPPORTED_MEDIA_TYPE" in response.text
    for json_type in ("application/json; charset=utf-8", "application/vnd.api+json"):
        accepted = await client.post(path, content=msgspec.json.encode(body), headers={"Content-Type": json_type})
        assert accepted.status_code == 200, accepted.text


async def test_an_open_server_keeps_form_routes_on_forms(client: AsyncTestClient) -> None:
    response = await client.post(
        "/v1/images/edits", files={"image": ("a.png", b"not an image", "image/png")}, data={"prompt": "x"}
    )
    assert response.status_code == 400 and "UNSUPPORTED_MEDIA_TYPE" not in response.text
    # /v1/videos takes a form or the same fields as JSON, but never text/plain.
    video = b'{"model": "fake-video", "prompt": "a barn"}'
    plain = await client.post("/v1/videos", content=video, headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415, plain.text
    as_json = await client.post("/v1/videos", content=video, headers={"Content-Type": "application/json"})
    assert as_json.status_code != 415


async def test_a_keyed_server_takes_any_content_type(keyed: tuple[AsyncTestClient, Components]) -> None:
    import msgspec

    client, state = keyed
    _, key = state.keystore.create("app")
    response = await client.post(
        "/v1/chat/completions",
        content=msgspec.json.encode(CHAT),
        headers={"Content-Type": "text/plain", "Authorization": f"Bearer {key}", "Host": "api.example"},
    )
    assert response.status_code == 200


# Output URLs and the Host header


async def test_output_urls_ignore_an_untrusted_host(keyed: tuple[AsyncTestClient, Components]) -> None:
    client, state = keyed
    _, key = state.keystore.create("app")
    headers = {"Authorization": f"Bearer {key}", "Host": "evil.test"}
    response = await client.post("/v1/images/generations", json=IMAGES, headers=headers)
    assert response.status_code == 200, response.text
    url = response.json()["data"][0]["url"]
    assert "evil.test" not in url
    assert url.startswith("http://testserver.local:80/v3/files/")  # the address the connection came to
    trusted = await client.post(
        "/v1/images/generations", json=IMAGES, headers={"Authorization": f"Bearer {key}", "Host": "localhost:8000"}
    )
    assert trusted.json()["data"][0]["url"].startswith("http://localhost:8000/v3/files/")


async def test_output_urls_use_public_url_for_an_untrusted_host(tmp_path: Path) -> None:
    state = make_state(tmp_path, public_url="https://images.example.com", auth={"static_keys": ["k"]})
    async for client in started(state):
        untrusted = await client.post(
            "/v1/images/generations", json=IMAGES, headers={"X-API-Key": "k", "Host": "evil.test"}
        )
        assert untrusted.json()["data"][0]["url"].startswith("https://images.example.com/v3/files/")
        submitted = await client.post("/v3/async/txt2img", json=TXT2IMG, headers={"X-API-Key": "k"})
        task_id = submitted.json()["task_id"]
        for _ in range(200):
            result = await client.get(
                "/v3/async/task-result", params={"task_id": task_id}, headers={"X-API-Key": "k", "Host": "evil.test"}
            )
            if result.json()["task"]["status"] == "TASK_STATUS_SUCCEED":
                break
        images = result.json()["images"]
        assert images and all(image["image_url"].startswith("https://images.example.com/") for image in images)


# /metrics


async def test_metrics_take_an_admin_key_by_default(keyed: tuple[AsyncTestClient, Components]) -> None:
    client, state = keyed
    _, customer = state.keystore.create("customer")
    _, admin = state.keystore.create("ops", admin=True)
    assert (await client.get("/metrics")).status_code == 401
    assert (await client.get("/metrics", headers={"Authorization": f"Bearer {customer}"})).status_code == 403
    scraped = await client.get("/metrics", headers={"Authorization": f"Bearer {admin}"})
    assert scraped.status_code == 200 and "omniserve_" in scraped.text


async def test_metrics_open_when_set(tmp_path: Path) -> None:
    state = make_state(tmp_path, auth={"static_keys": ["k"]}, metrics={"access": "open"})
    async for client in started(state):
        assert (await client.get("/metrics")).status_code == 200


def test_metrics_on_their_own_port(tmp_path: Path) -> None:
    with (
        socket_port() as metrics_port,
        live_server(tmp_path, auth={"static_keys": ["k"]}, metrics={"access": "port", "port": metrics_port}) as server,
    ):
        on_api = httpx.get(f"{server.base_url}/metrics", headers={"X-API-Key": "k"}, timeout=5)
        assert on_api.status_code == 404
        on_metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        assert on_metrics.status_code == 200 and "omniserve_" in on_metrics.text
        # The metrics listener serves nothing else.
        other = httpx.get(f"http://127.0.0.1:{metrics_port}/v1/models", headers={"X-API-Key": "k"}, timeout=5)
        assert other.status_code == 404


class socket_port:
    """A free localhost port."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    def __exit__(self, *_: object) -> None:
        return None


# The OpenAPI document and 405


async def test_405_names_the_allowed_methods(client: AsyncTestClient) -> None:
    response = await client.get("/v1/chat/completions")
    assert response.status_code == 405
    assert "POST" in response.headers["allow"]
    assert response.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


def _validator(document: dict[str, Any], path: str, method: str, status: int) -> Draft202012Validator:
    response = document["paths"][path][method]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    return Draft202012Validator({**schema, "components": document["components"]})


async def test_documented_error_responses_match_the_real_ones(keyed: tuple[AsyncTestClient, Components]) -> None:
    client, state = keyed
    _, customer = state.keystore.create("customer")
    auth = {"Authorization": f"Bearer {customer}"}
    document = (await client.get("/schema/openapi.json")).json()
    validate_openapi(document)  # still a valid OpenAPI document
    assert "/metrics" in document["paths"]
    cases = [
        ("/v1/chat/completions", "post", {"model": 5}, auth, 400),
        ("/v1/chat/completions", "post", CHAT, {}, 401),
        ("/v3/async/txt2img", "post", {"request": {"width": "x"}}, auth, 400),
        ("/v3/async/txt2img", "post", TXT2IMG, {"Authorization": "Bearer nope"}, 403),
        ("/api/v3/text2img", "post", {**SDAPI, "key": "nope"}, {}, 403),
        ("/api/v3/text2img", "post", {**SDAPI, "width": "many"}, {}, 400),
        (NOVASSIUM, "post", {"prompt": "x"}, {}, 401),
        ("/admin/scheduler", "get", None, auth, 403),
    ]
    for path, method, body, headers, status in cases:
        response = await client.request(method.upper(), path, json=body, headers=headers)
        assert response.status_code == status, (path, response.text)
        errors = list(_validator(document, path, method, status).iter_errors(response.json()))
        assert not errors, (path, status, response.json(), errors)
    for path_item in document["paths"].values():
        for operation in path_item.values():
            for status, response in operation.get("responses", {}).items():
                if status >= "400":
                    text = str(response)
                    assert "status_code" not in text, (operation.get("operationId"), status)
    allow = document["paths"]["/v1/chat/completions"]["post"]["responses"]["405"]
    assert "Allow" in allow["headers"]


async def test_a_vendor_field_error_matches_the_document(keyed: tuple[AsyncTestClient, Components]) -> None:
    client, state = keyed
    _, key = state.keystore.create("app")
    document = (await client.get("/schema/openapi.json")).json()
    response = await client.post("/api/v3/text2img", json={**SDAPI, "width": "many", "key": key})
    assert response.status_code == 400, response.text
    assert not list(_validator(document, "/api/v3/text2img", "post", 400).iter_errors(response.json()))
    novassium = await client.post(NOVASSIUM, json={"prompt": 5}, headers={"X-API-Key": key})
    assert novassium.status_code == 400, novassium.text
    assert not list(_validator(document, NOVASSIUM, "post", 400).iter_errors(novassium.json()))


# --config after the command


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "omniserve.toml"
    config.write_text(f'data_dir = "{tmp_path / "from-config"}"\n')
    return config


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "{config}", "keys", "create", "x"],
        ["keys", "--config", "{config}", "create", "x"],
        ["keys", "create", "x", "--config", "{config}"],
        ["keys", "create", "--config", "{config}", "x"],
    ],
)
def test_config_is_taken_before_or_after_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OMNISERVE_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = _config(tmp_path)
    assert main([part.format(config=config) for part in argv]) == 0
    assert (tmp_path / "from-config" / "keys.sqlite3").exists()
    assert not (tmp_path / "home").exists()


def test_demo_takes_config_after_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from server import cli

    seen: list[Path] = []
    monkeypatch.setattr(cli, "cmd_demo", lambda settings, force: seen.append(settings.data_path) or 0)
    assert main(["demo", "--config", str(_config(tmp_path)), "--force"]) == 0
    assert seen == [tmp_path / "from-config"]
