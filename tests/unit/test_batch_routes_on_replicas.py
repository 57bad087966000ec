"""The Files and Batch routes of two app replicas on one Redis (settings' store_url) and one
shared files folder (batches.files_dir): a file uploaded to one is listed and read on the
other, a batch created on one is followed and its output downloaded on the other, and a
stopped Redis is a 503 with Retry-After, never a hang."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

from litestar.testing import AsyncTestClient

from server.app import create_app
from tests.redis_server import redis_server
from tests.unit.conftest import make_state

WAIT_S = 20.0


async def replicas(stack: AsyncExitStack, tmp_path: Path, url: str) -> AsyncIterator[AsyncTestClient]:
    for name in ("a", "b"):
        state = make_state(
            tmp_path / name,
            store_url=url,
            store_timeout_s=0.5,
            store_retry_after_s=1.0,
            batches={"files_dir": str(tmp_path / "shared-files")},
            cluster={"heartbeat_s": 0.1, "lease_s": 0.5},
        )
        client = await stack.enter_async_context(AsyncTestClient(create_app(state)))
        await state.load_task  # type: ignore[misc]
        client.app_state = state  # type: ignore[attr-defined]
        yield client


async def test_a_batch_made_on_one_replica_is_followed_and_read_on_the_other(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        async with AsyncExitStack() as stack:
            first, second = [client async for client in replicas(stack, tmp_path, server.url)]
            _, key = first.app_state.keystore.create("batches")  # type: ignore[attr-defined]
            headers = {"Authorization": f"Bearer {key}"}
            lines = [
                {
                    "custom_id": f"c{i}",
                    "method": "POST",
                    "url": "/v1/embeddings",
                    "body": {"model": model, "input": "hi"},
                }
                for i, model in enumerate(["fake-embed", "fake-embed", "no-such-model"])
            ]
            data = "\n".join(json.dumps(line) for line in lines).encode()
            uploaded = await first.post(
                "/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"}, headers=headers
            )
            assert uploaded.status_code == 200, uploaded.text
            file_id = uploaded.json()["id"]
            listed = await second.get("/v1/files", headers=headers)
            assert [file["id"] for file in listed.json()["data"]] == [file_id]
            assert (await second.get(f"/v1/files/{file_id}/content", headers=headers)).content == data

            created = await first.post(
                "/v1/batches",
                json={"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"},
                headers=headers,
            )
            assert created.status_code == 200, created.text
            batch_id = created.json()["id"]
            async with asyncio.timeout(WAIT_S):
                while True:
                    batch = (await second.get(f"/v1/batches/{batch_id}", headers=headers)).json()
                    if batch["status"] == "completed":
                        break
                    await asyncio.sleep(0.05)
            assert batch["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
            output = await second.get(f"/v1/files/{batch['output_file_id']}/content", headers=headers)
            assert [json.loads(raw)["custom_id"] for raw in output.text.splitlines()] == ["c0", "c1"]
            errors = await second.get(f"/v1/files/{batch['error_file_id']}/content", headers=headers)
            assert [json.loads(raw)["custom_id"] for raw in errors.text.splitlines()] == ["c2"]

            server.stop()
            down = await second.get(f"/v1/batches/{batch_id}", headers=headers)
            assert down.status_code == 503 and "Retry-After" in down.headers
            assert down.json()["error"]["code"] == "SERVICE_NOT_AVAILABLE"
