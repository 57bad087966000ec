"""Errors, auth and routing through the real app with fake engines."""

from __future__ import annotations

from pathlib import Path

from litestar.testing import AsyncTestClient

from server.app import create_app
from tests.unit.conftest import make_state

CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


async def test_openai_envelope_for_bad_types_names_the_param(client: AsyncTestClient) -> None:
    response = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": "three"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "INVALID_REQUEST_BODY"
    assert error["param"] == "max_tokens"
    assert error["type"] == "invalid_request_error"


async def test_malformed_json(client: AsyncTestClient) -> None:
    response = await client.post(
        "/openai/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_REQUEST_BODY"


async def test_unknown_model_is_404(client: AsyncTestClient) -> None:
    response = await client.post("/v1/chat/completions", json={**CHAT, "model": "missing"})
    assert response.status_code == 404
    assert response.json()["error"] == {
        "message": "The model 'missing' does not exist.",
        "type": "not_found_error",
        "param": "model",
        "code": "MODEL_NOT_FOUND",
    }


async def test_unknown_routes_and_methods_in_each_envelope(client: AsyncTestClient) -> None:
    openai = await client.get("/openai/v1/nothing")
    assert openai.status_code == 404 and openai.json()["error"]["code"] == "API_NOT_FOUND"
    v3 = await client.get("/v3/async/nothing")
    assert v3.status_code == 404
    assert v3.json() == {"code": 404, "reason": "API_NOT_FOUND", "message": "No such API route.", "metadata": {}}
    wrong_method = await client.get("/v1/chat/completions")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


async def test_context_limit_is_stated(client: AsyncTestClient) -> None:
    response = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 500})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "max_tokens"
    assert "maximum context length is 64 tokens" in error["message"]
    long_prompt = {**CHAT, "messages": [{"role": "user", "content": "x" * 100}]}
    response = await client.post("/v1/chat/completions", json=long_prompt)
    assert response.status_code == 400
    assert "64" in response.json()["error"]["message"]


async def test_unsupported_completion_option_names_param(client: AsyncTestClient) -> None:
    response = await client.post("/v1/completions", json={"model": "fake-chat", "prompt": "a", "suffix": "z"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "suffix"


async def test_mixed_prompt_list_is_rejected(client: AsyncTestClient) -> None:
    response = await client.post("/v1/completions", json={"model": "fake-chat", "prompt": ["a", 1]})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"


async def test_wrong_model_kind(client: AsyncTestClient) -> None:
    response = await client.post("/v1/embeddings", json={"model": "fake-chat", "input": "a"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"


async def test_dimensions_unsupported_is_a_clear_400(client: AsyncTestClient) -> None:
    response = await client.post("/v1/embeddings", json={"model": "fake-embed", "input": "a", "dimensions": 2})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "dimensions"


async def test_tools_without_parser_are_refused(client: AsyncTestClient) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    response = await client.post("/v1/chat/completions", json={**CHAT, "tools": tools})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tool_choice"


async def test_oversized_body_is_413(tmp_path: Path) -> None:
    state = make_state(tmp_path, limits={"max_body_bytes": 2000})
    async with AsyncTestClient(create_app(state)) as client:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
        response = await client.post("/v1/chat/completions", json=big)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "REQUEST_BODY_TOO_LARGE"


async def test_engine_crash_is_a_generic_500_without_internals(tmp_path: Path) -> None:
    import msgspec

    from tests.fakes import FAKE_SPECS

    broken = [msgspec.structs.replace(FAKE_SPECS[0], options={"fail_load": True})]
    state = make_state(tmp_path, specs=broken)
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["models"] == {"fake-chat": "failed"}
        response = await client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 503
        assert "/secret/path" not in response.text
        assert "Traceback" not in response.text


async def test_models_list_includes_aliases(client: AsyncTestClient) -> None:
    response = await client.get("/v1/models")
    ids = [card["id"] for card in response.json()["data"]]
    assert ids == ["fake-chat", "fake-chat-alias", "fake-embed", "fake-rerank", "fake-sd"]
    one = await client.get("/openai/v1/models/fake-embed")
    assert one.json()["id"] == "fake-embed"
    missing = await client.get("/openai/v1/models/none")
    assert missing.status_code == 404


async def test_ready_and_health(client: AsyncTestClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    ready = await client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    schema = await client.get("/schema/openapi.json")
    assert "/v1/chat/completions" in schema.json()["paths"]


class TestAuth:
    async def test_open_on_loopback_without_keys(self, client: AsyncTestClient) -> None:
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200

    async def test_every_header_form(self, tmp_path: Path) -> None:
        state = make_state(tmp_path)
        _, key = state.keystore.create("tester")
        async with AsyncTestClient(create_app(state)) as client:
            await state.load_task  # type: ignore[misc]
            for headers in ({"Authorization": f"Bearer {key}"}, {"Authorization": key}, {"X-API-Key": key}):
                response = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
                assert response.status_code == 200, headers
            missing = await client.post("/v1/chat/completions", json=CHAT)
            assert missing.status_code == 401
            assert missing.json()["error"]["code"] == "MISSING_API_KEY"
            wrong = await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 403
            assert wrong.json()["error"]["code"] == "INVALID_API_KEY"
            assert key not in wrong.text
            # Health stays open for probes.
            assert (await client.get("/health")).status_code == 200

    async def test_static_keys_from_settings(self, tmp_path: Path) -> None:
        state = make_state(tmp_path, auth={"static_keys": ["s3cret-static"]})
        async with AsyncTestClient(create_app(state)) as client:
            await state.load_task  # type: ignore[misc]
            ok = await client.get("/v1/models", headers={"X-API-Key": "s3cret-static"})
            assert ok.status_code == 200
            assert (await client.get("/v1/models")).status_code == 401


async def test_streaming_chat_with_usage(client: AsyncTestClient) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}, "n": 2}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    import json

    chunks = [json.loads(event) for event in events[:-1]]
    assert all("usage" in chunk for chunk in chunks)
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 6
    content = {0: "", 1: ""}
    for chunk in chunks[:-1]:
        assert chunk["usage"] is None
        for choice in chunk["choices"]:
            content[choice["index"]] += choice["delta"].get("content", "")
    assert content == {0: "aba", 1: "aba"}


async def test_missing_field_is_named(client: AsyncTestClient) -> None:
    response = await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"


async def test_a_request_naming_a_model_of_another_kind_loads_nothing(client: AsyncTestClient) -> None:
    """The kind is checked from the catalog before the model is loaded: a chat request naming
    an image model must not load it (and so evict nothing) before its 400."""
    state = client.app_state  # type: ignore[attr-defined]
    await state.scheduler.unload_all()
    requests = [
        ("/v1/chat/completions", {**CHAT, "model": "fake-sd"}),
        ("/v1/completions", {"model": "fake-sd", "prompt": "hi", "max_tokens": 3}),
        ("/v1/embeddings", {"model": "fake-chat", "input": "hi"}),
        ("/v1/rerank", {"model": "fake-embed", "query": "q", "documents": ["d"]}),
        ("/v1/tokenize", {"model": "fake-sd", "prompt": "hi"}),
        ("/v1/detokenize", {"model": "fake-embed", "tokens": [1, 2]}),
        ("/v1/images/generations", {"model": "fake-chat", "prompt": "a cat"}),
    ]
    for path, body in requests:
        response = await client.post(path, json=body)
        assert response.status_code == 400, (path, response.text)
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("INVALID_REQUEST_BODY", "model"), path
        assert f"The model '{body['model']}' is a" in error["message"], path
    assert {state.value for state in state.scheduler.residency().values()} == {"unloaded"}


async def test_every_route_declares_its_operation_id(client: AsyncTestClient) -> None:
    from litestar.routes import HTTPRoute

    app = client.app
    undeclared = [
        (route.path, handler.handler_name)
        for route in app.routes
        if isinstance(route, HTTPRoute) and not route.path.startswith("/schema")  # the document's own routes
        for handler in route.route_handlers
        if handler.include_in_schema and handler.operation_id is None
    ]
    assert undeclared == []
    ids = [
        operation["operationId"]
        for item in (await client.get("/schema/openapi.json")).json()["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict) and "operationId" in operation
    ]
    assert len(ids) == len(set(ids)) >= 50
