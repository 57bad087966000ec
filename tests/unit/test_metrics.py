"""/metrics parsed as Prometheus text: the families exist and move as requests are made."""

from __future__ import annotations

from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: AsyncTestClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_request_and_inference_metrics_move(client: AsyncTestClient) -> None:
    before = await scrape(client)
    response = await client.post("/openai/v1/embeddings", json={"model": "fake-embed", "input": ["abc", "de"]})
    assert response.status_code == 200
    chat = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=chat) as streamed:
        [line async for line in streamed.aiter_lines()]
    missing = await client.post("/v1/embeddings", json={"model": "nope", "input": "a"})
    assert missing.status_code == 404
    after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    http = "http_server_request_duration_seconds_count"
    assert moved(http, method="POST", route="/openai/v1/embeddings", status="200") == 1
    assert moved(http, method="POST", route="/v1/chat/completions", status="200") == 1
    assert moved(http, method="POST", route="/v1/embeddings", status="404") == 1
    assert moved(http, method="GET", route="/metrics", status="200") == 1  # the first scrape
    embeddings = {"operation": "embeddings", "model": "fake-embed"}
    assert moved("gen_ai_server_request_duration_seconds_count", **embeddings, error_type="") == 1
    assert moved("omniserve_tokens_total", **embeddings, type="input") == 5
    chat_labels = {"operation": "chat", "model": "fake-chat"}
    assert moved("omniserve_tokens_total", **chat_labels, type="output") == 4
    assert moved("gen_ai_server_time_to_first_token_seconds_count", **chat_labels) == 1
    assert moved("gen_ai_server_time_per_output_token_seconds_count", **chat_labels) == 1
    assert value(after, "http_server_active_requests") == 1  # the scrape itself


async def test_scrape_time_state(client: AsyncTestClient) -> None:
    body = {"request": {"model_name": "fake-sd", "prompt": "a barn", "width": 128, "height": 128, "steps": 1}}
    submitted = await client.post("/v3/async/txt2img", json=body)
    assert submitted.status_code == 200
    samples = await scrape(client)
    assert value(samples, "omniserve_model_resident", model="fake-embed") == 1
    assert value(samples, "omniserve_model_state", model="fake-embed", state="resident") == 1
    assert value(samples, "omniserve_model_state", model="fake-embed", state="loading") == 0
    assert ("omniserve_queue_waiting_requests", frozenset({("model", "fake-chat")})) in samples
    assert ("omniserve_queue_active_requests", frozenset({("model", "fake-chat")})) in samples
    statuses = ("TASK_STATUS_QUEUED", "TASK_STATUS_PROCESSING", "TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED")
    assert sum(value(samples, "omniserve_tasks", status=status) for status in statuses) == 1
    assert value(samples, "omniserve_webhook_deliveries_total", outcome="delivered") == 0
    assert value(samples, "process_resident_memory_bytes") > 0


async def test_images_count_as_produced(client: AsyncTestClient) -> None:
    labels = {"operation": "image_generation", "model": "fake-sd"}
    before = value(await scrape(client), "omniserve_images_total", **labels)
    body = {
        "model": "fake-sd",
        "prompt": "a barn",
        "n": 2,
        "size": "128x128",
        "steps": 1,
        "response_format": "b64_json",
    }
    response = await client.post("/v1/images/generations", json=body)
    assert response.status_code == 200
    assert value(await scrape(client), "omniserve_images_total", **labels) - before == 2
