"""The Files and Batch routes through the openai SDK, on the real app over fake engines: the
SDK parses every object, keys are scoped, lines are charged like the live route, limits answer
in OpenAI's envelope."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import openai
import pytest

from server.composition import Components
from tests.unit.serving import serve

PRICES = {
    "price_per_1k_input_tokens": 1000.0,  # 1 credit a prompt token
    "price_per_1k_output_tokens": 2000.0,  # 2 credits a generated token
    "requests_per_hour": 0,
    "requests_per_day": 0,
}
# The fake chat template renders "user:hello\nassistant:" (21 tokens); 4 tokens are generated.
LINE_COST = 21 * 1 + 4 * 2
LIMITS = {"max_file_bytes": 4096}


def chat_line(custom_id: str, model: str = "fake-chat") -> dict[str, object]:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def jsonl(*lines: object) -> bytes:
    return "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines).encode()


async def finished(client: openai.AsyncOpenAI, batch_id: str) -> openai.types.Batch:
    async with asyncio.timeout(20):
        while True:
            batch = await client.batches.retrieve(batch_id)
            if batch.status in ("completed", "failed", "expired", "cancelled"):
                return batch
            await asyncio.sleep(0.05)


def keyed(state: Components, name: str, credits: float | None) -> tuple[str, str]:
    """A new key's id and secret."""
    info, key = state.keystore.create(name)
    if credits is not None:
        state.keystore.set_credits(info.id, credits)
    return info.id, key


@pytest.mark.parametrize("prefix", ["/v1", "/openai/v1"])
async def test_a_batch_through_the_sdk_is_charged_per_line_and_scoped_to_its_key(tmp_path: Path, prefix: str) -> None:
    async with serve(tmp_path, accounts=PRICES, batches=LIMITS) as (url, state):
        owner_id, owner_key = keyed(state, "owner", 1000.0)
        owner = openai.AsyncOpenAI(base_url=url + prefix, api_key=owner_key, max_retries=0)
        other = openai.AsyncOpenAI(base_url=url + prefix, api_key=keyed(state, "other", None)[1], max_retries=0)
        data = jsonl(chat_line("a"), "{oops", chat_line("embed", model="fake-embed"), chat_line("b"))
        uploaded = await owner.files.create(file=("in.jsonl", data), purpose="batch")
        assert (uploaded.purpose, uploaded.bytes, uploaded.filename) == ("batch", len(data), "in.jsonl")
        created = await owner.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"run": "unit"},
        )
        assert created.status == "validating" and created.metadata == {"run": "unit"}
        batch = await finished(owner, created.id)
        assert batch.status == "completed"
        assert batch.request_counts is not None
        assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (4, 2, 2)
        assert batch.output_file_id is not None and batch.error_file_id is not None
        output = [json.loads(raw) for raw in (await owner.files.content(batch.output_file_id)).content.splitlines()]
        assert [entry["custom_id"] for entry in output] == ["a", "b"]
        assert output[0]["response"]["body"]["choices"][0]["message"]["content"] == "abab"
        errors = [json.loads(raw) for raw in (await owner.files.content(batch.error_file_id)).content.splitlines()]
        assert errors[0]["error"]["code"] == "invalid_json_line"
        assert errors[1]["custom_id"] == "embed" and errors[1]["response"]["status_code"] == 400
        # Each line was charged as the live route charges it; the failed ones cost nothing.
        account = state.keystore.account(owner_id)
        assert account is not None and account.credits == 1000.0 - 2 * LINE_COST

        # Another key sees none of it.
        with pytest.raises(openai.NotFoundError) as missing:
            await other.batches.retrieve(batch.id)
        assert missing.value.body["code"] == "API_NOT_FOUND"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):
            await other.files.content(batch.output_file_id)
        assert (await other.batches.list()).data == []
        assert [file.id async for file in other.files.list()] == []
        assert batch.id in [b.id async for b in owner.batches.list(limit=5)]
        listed = {file.id: file.purpose async for file in owner.files.list()}
        assert listed == {
            uploaded.id: "batch",
            batch.output_file_id: "batch_output",
            batch.error_file_id: "batch_output",
        }

        deleted = await owner.files.delete(uploaded.id)
        assert deleted.deleted and deleted.id == uploaded.id
        with pytest.raises(openai.NotFoundError):
            await owner.files.retrieve(uploaded.id)


async def test_refusals_are_openai_errors(tmp_path: Path) -> None:
    async with serve(tmp_path, batches=LIMITS) as (url, _):
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="open", max_retries=0)
        with pytest.raises(openai.APIStatusError) as too_big:
            await client.files.create(file=("in.jsonl", b"x" * 5000), purpose="batch")
        assert too_big.value.status_code == 413
        with pytest.raises(openai.NotFoundError) as unknown:
            await client.batches.create(
                input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert unknown.value.body["param"] == "input_file_id"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):
            await client.batches.cancel("batch_nope")
        uploaded = await client.files.create(file=("in.jsonl", jsonl(chat_line("a"))), purpose="batch")
        with pytest.raises(openai.BadRequestError) as window:
            await client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window="72h",  # type: ignore[arg-type]
            )
        assert window.value.body["param"] == "completion_window"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as endpoint:
            await client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/images/generations",  # type: ignore[arg-type]
                completion_window="24h",
            )
        assert endpoint.value.body["param"] == "endpoint"  # type: ignore[index]
