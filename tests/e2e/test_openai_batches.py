"""The Files and Batch API through the official openai SDK against running servers: a batch on
the demo catalog's real engines, and a batch that survives a kill -9 in its middle."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import openai
import pytest

from engines.demo import TINY_CHAT_MODEL
from tests.e2e.conftest import RunningServer
from tests.e2e.test_task_restarts import Server, metered_key, wait_for

pytestmark = pytest.mark.e2e

# The demo catalog's tiny random chat model (one place to rename it).
CHAT_MODEL = TINY_CHAT_MODEL
EMBEDDING_MODEL = "demo-embed"
ENDED = ("completed", "failed", "expired", "cancelled")


def chat_line(custom_id: str, model: str = CHAT_MODEL, max_tokens: int = 4) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": f"Say {custom_id}."}], "max_tokens": max_tokens}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def jsonl(lines: list[Any]) -> bytes:
    return "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines).encode()


def ended(client: openai.OpenAI, batch_id: str, timeout_s: float = 120.0) -> openai.types.Batch:
    def check() -> openai.types.Batch | None:
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status in ENDED else None

    batch: openai.types.Batch = wait_for(check, timeout_s)
    return batch


def file_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(raw) for raw in client.files.content(file_id).content.splitlines()]


def test_a_chat_batch_and_an_embedding_batch_on_the_demo_models(server: RunningServer) -> None:
    client = openai.OpenAI(base_url=server.openai_url, api_key=server.api_key, max_retries=0, timeout=60)
    lines = [chat_line("a"), chat_line("b"), "{broken", chat_line("not-chat", model=EMBEDDING_MODEL)]
    uploaded = client.files.create(file=("chat.jsonl", jsonl(lines)), purpose="batch")
    assert client.files.retrieve(uploaded.id).bytes == uploaded.bytes
    created = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = ended(client, created.id)
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 2)
    output = file_lines(client, batch.output_file_id)
    assert [entry["custom_id"] for entry in output] == ["a", "b"]
    for entry in output:
        body = entry["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == CHAT_MODEL
        assert 0 < body["usage"]["completion_tokens"] <= 4
    errors = file_lines(client, batch.error_file_id)
    assert errors[0]["error"]["code"] == "invalid_json_line"
    assert errors[1]["custom_id"] == "not-chat" and errors[1]["response"]["status_code"] == 400

    texts = [
        {"custom_id": f"e{i}", "url": "/v1/embeddings", "body": {"model": EMBEDDING_MODEL, "input": t}}
        for i, t in enumerate(["a red apple", "a green pear"])
    ]
    embed_file = client.files.create(file=("embed.jsonl", jsonl(texts)), purpose="batch")
    embedded = ended(
        client,
        client.batches.create(input_file_id=embed_file.id, endpoint="/v1/embeddings", completion_window="24h").id,
    )
    assert embedded.status == "completed" and embedded.error_file_id is None
    vectors = [
        entry["response"]["body"]["data"][0]["embedding"] for entry in file_lines(client, embedded.output_file_id)
    ]
    # The demo embedding model is real: all-MiniLM-L6-v2's 384 dimensions.
    assert [len(vector) for vector in vectors] == [384, 384]


def recorded_lines(data_dir: Path, batch_id: str) -> dict[int, str]:
    """Each line with a recorded result, and that result's id."""
    with sqlite3.connect(data_dir / "batches.sqlite3") as db:
        rows = db.execute("SELECT line, output FROM batch_lines WHERE batch_id = ?", (batch_id,)).fetchall()
    return {line: json.loads(output)["id"] for line, output in rows}


def test_kill_9_mid_batch_resumes_and_records_every_line_once(tmp_path: Path) -> None:
    _, key = metered_key(tmp_path, 10_000)
    total = 20
    # Each line generates 10 tokens of 50 ms: about half a second a line, two at a time.
    server = Server(tmp_path, TEST_TOKEN_S="0.05", OMNISERVE_BATCHES__CONCURRENT_LINES="2")
    lines = [chat_line(f"line-{i:02d}", model="fake-chat", max_tokens=10) for i in range(total)]
    with server.running() as process:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=30)
        uploaded = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch_id = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id

        def some_done() -> bool:
            counts = client.batches.retrieve(batch_id).request_counts
            return counts is not None and counts.completed >= 4

        wait_for(some_done)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    before = recorded_lines(tmp_path, batch_id)
    assert 4 <= len(before) < total  # the crash came in the middle

    with server.running():
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=30)
        assert client.batches.retrieve(batch_id).status == "in_progress"
        batch = ended(client, batch_id, timeout_s=60)
        assert batch.status == "completed"
        assert batch.request_counts is not None
        assert (batch.request_counts.total, batch.request_counts.completed) == (total, total)
        output = file_lines(client, batch.output_file_id)
        # Every line once, in input order; those recorded before the crash kept as they were.
        assert [entry["custom_id"] for entry in output] == [f"line-{i:02d}" for i in range(total)]
        after = recorded_lines(tmp_path, batch_id)
        assert sorted(after) == list(range(total))
        assert {line: after[line] for line in before} == before
        assert [entry["id"] for entry in output] == [after[line] for line in range(total)]
