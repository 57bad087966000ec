"""The app on a Redis task store (settings' ``store_url``): /v3 tasks run, end and deliver their
webhooks through Redis, and a server started while Redis is down starts its task runner once
Redis answers. A real redis-server on a loopback port; the fake image engine."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from server.keystore_redis import RedisKeyStore
from server.settings_loading import SettingsError, load_settings
from server.tasks.models import TaskStatus
from server.tasks.store_redis import RedisTaskStore
from tests.redis_server import redis_server
from tests.unit.conftest import make_state
from tests.unit.test_task_runner import FREE, REQUEST, auth, running
from tests.unit.test_webhooks import receiver

DEADLINE_S = 30.0
# Reads /metrics; a key from settings, so it answers while Redis (the key store) is down too.
ADMIN_KEY = "static-admin-key-for-metrics"


async def _result(client: AsyncTestClient, key: str, task_id: str) -> dict[str, Any]:
    """The task's result once it has ended."""
    async with asyncio.timeout(DEADLINE_S):
        while True:
            response = await client.get("/v3/async/task-result", params={"task_id": task_id}, headers=auth(key))
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if body["task"]["status"] in (TaskStatus.SUCCEED, TaskStatus.FAILED):
                return body
            await asyncio.sleep(0.05)


async def _task_counts(client: AsyncTestClient) -> dict[str, float]:
    """omniserve_tasks by status, as /metrics renders them (read over HTTP: the app's Redis
    connections belong to the loop the app runs on)."""
    response = await client.get("/metrics", headers=auth(ADMIN_KEY))
    assert response.status_code == 200, response.text
    return {
        sample.labels["status"]: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "omniserve_tasks"
    }


async def test_tasks_run_and_deliver_their_webhooks_through_redis(tmp_path: Any) -> None:
    with redis_server(tmp_path) as server:
        state = make_state(tmp_path / "data", store_url=server.url, auth={"static_admin_keys": [ADMIN_KEY]}, **FREE)
        _, key = state.keystore.create("a")
        replica = RedisTaskStore(server.url, timeout_s=2.0, retry_after_s=1.0)
        async with receiver(lambda n: 200) as (url, received), running(state) as client:
            body = {"request": REQUEST, "extra": {"webhook": {"url": url}}}
            submitted = await client.post("/v3/async/txt2img", json=body, headers=auth(key))
            assert submitted.status_code == 200, submitted.text
            task_id = submitted.json()["task_id"]
            result = await _result(client, key, task_id)
            assert result["task"]["status"] == TaskStatus.SUCCEED, result
            assert len(result["images"]) == 1
            async with asyncio.timeout(DEADLINE_S):
                while await replica.pending_webhooks():  # delivered, then out of the outbox
                    await asyncio.sleep(0.05)
            stored = await replica.get(task_id)  # what every replica sees
            assert stored is not None and stored.status is TaskStatus.SUCCEED and len(stored.outputs) == 1
            counts = await _task_counts(client)
            assert counts == {status.value: float(status is TaskStatus.SUCCEED) for status in TaskStatus}
        await replica.close()
    assert len(received) == 1
    assert b'"TASK_STATUS_SUCCEED"' in received[0][1] and task_id.encode() in received[0][1]


async def test_the_task_runner_starts_once_redis_answers(tmp_path: Any) -> None:
    with redis_server(tmp_path) as server:
        server.stop()  # its port, with nothing listening
        state = make_state(
            tmp_path / "data",
            store_url=server.url,
            store_timeout_s=0.5,
            store_retry_after_s=0.2,
            auth={"static_admin_keys": [ADMIN_KEY]},
            **FREE,
        )
        async with running(state) as client:
            down = await client.get("/v3/async/task-result", params={"task_id": "t"}, headers=auth("os-abc.def"))
            assert down.status_code == 503
            assert await _task_counts(client) == {}  # a scrape goes on without the task counts

            server.start()  # empty: the operator makes the key again
            operator = RedisKeyStore(server.url, replica="operator", timeout_s=2.0, retry_after_s=1.0)
            _, key = operator.create("a")
            operator.close()
            async with asyncio.timeout(DEADLINE_S):
                while True:
                    submitted = await client.post("/v3/async/txt2img", json={"request": REQUEST}, headers=auth(key))
                    if submitted.status_code != 503:
                        break
                    await asyncio.sleep(0.1)
            assert submitted.status_code == 200, submitted.text
            result = await _result(client, key, submitted.json()["task_id"])
            assert result["task"]["status"] == TaskStatus.SUCCEED, result


def test_the_webhook_lease_comes_from_settings_and_outlasts_an_attempt(tmp_path: Any) -> None:
    with pytest.raises(SettingsError, match="webhook_lease_s"):
        load_settings(environ={"OMNISERVE_TASKS__WEBHOOK_LEASE_S": "20"})  # fetch_timeout_s is 15
    state = make_state(tmp_path, tasks={"webhook_lease_s": 90.0})
    assert state.task_runner.outbox.lease_s == 90.0
