"""/v3 tasks shared by two replicas that both run demo-sd: a task submitted to one is read and
downloaded on the other; a task whose replica is killed mid-run is taken over by the other and
succeeds, charged once, its webhook delivered once; one whose replica is killed on each of its
runs (1 + cluster.max_task_retries) ends FAILED with a reason, refunded exactly once, its webhook
delivered once. novita-client submits; httpx reads results on a chosen replica."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import msgspec
import pytest
from novita_client import NovitaClient
from novita_client.proto import Txt2ImgV3Request

from engines.base import ModelSpec
from server.keystore_redis import PREFIX
from tests.replicas.cluster import MODEL, PRICE_PER_IMAGE, Cluster, Replica, running_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CLIENT_TIMEOUT_S = 30.0
TASK_DEADLINE_S = 120.0
# Steps of a task meant to be killed mid-run: long enough (about 40 ms a step here) that the
# test sees it PROCESSING and kills its replica before it ends.
LONG_STEPS = 60
# How long after a task ends the test still listens for a second webhook of it.
WEBHOOK_QUIET_S = 3.0
SUCCEED = "TASK_STATUS_SUCCEED"
FAILED = "TASK_STATUS_FAILED"
PROCESSING = "TASK_STATUS_PROCESSING"


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, replica_catalog: list[ModelSpec]) -> Iterator[Cluster]:
    # The webhook receiver below listens on loopback.
    settings = {"tasks": {"allow_private_urls": True}}
    with running_cluster(tmp_path_factory.mktemp("replica-tasks"), replica_catalog, settings=settings) as cluster:
        yield cluster


class Webhooks:
    """A loopback receiver: every task id it was told about, as many times as it was told."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.url = ""

    def count(self, task_id: str) -> int:
        return sum(1 for body in self.received if body["payload"]["task"]["task_id"] == task_id)


@contextmanager
def webhooks() -> Iterator[Webhooks]:
    hooks = Webhooks()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            hooks.received.append(msgspec.json.decode(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hooks.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hooks
    finally:
        server.shutdown()
        server.server_close()


def _result(replica: Replica, key: str, task_id: str) -> dict[str, Any]:
    response = httpx.get(
        f"{replica.base_url}/v3/async/task-result",
        params={"task_id": task_id},
        headers={"Authorization": f"Bearer {key}"},
        timeout=CLIENT_TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def _until(cluster: Cluster, replica: Replica, key: str, task_id: str, wanted: set[str]) -> dict[str, Any]:
    """The task's result on ``replica`` once its status is one of ``wanted``."""
    deadline = time.monotonic() + TASK_DEADLINE_S
    while True:
        body = _result(replica, key, task_id)
        if body["task"]["status"] in wanted:
            return body
        assert time.monotonic() < deadline, f"{body}\n{cluster.log_tails()}"
        time.sleep(0.05)


def _submit(replica: Replica, key: str, steps: int, webhook_url: str | None = None) -> str:
    request = Txt2ImgV3Request(model_name=MODEL, prompt="a lighthouse", width=128, height=128, image_num=1, steps=steps)
    body: dict[str, Any] = {"request": msgspec.to_builtins(request)}
    if webhook_url is not None:
        body["extra"] = {"webhook": {"url": webhook_url}}
        response = httpx.post(
            f"{replica.base_url}/v3/async/txt2img",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=CLIENT_TIMEOUT_S,
        )
        assert response.status_code == 200, response.text
        return str(response.json()["task_id"])
    return str(NovitaClient(key, base_url=replica.base_url).raw_txt2img_v3(request).task_id)


def _stored(cluster: Cluster, task_id: str) -> tuple[str, int]:
    """The task's status and how many runs took it, as the shared store holds them."""
    with cluster.db() as db:
        status, attempts = db.hmget(f"{PREFIX}task:{task_id}", "status", "attempts")
    return str(status), int(attempts or 0)


def _wait_webhooks(hooks: Webhooks, task_id: str) -> int:
    """How many webhooks of the task arrived: waits for the first, then listens a while longer."""
    deadline = time.monotonic() + TASK_DEADLINE_S
    while hooks.count(task_id) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(WEBHOOK_QUIET_S)
    return hooks.count(task_id)


def test_a_task_submitted_to_one_replica_is_read_and_downloaded_on_the_other(cluster: Cluster) -> None:
    key_id, key = cluster.create_key("task-on-a", credits=3 * PRICE_PER_IMAGE)
    task_id = _submit(cluster.a, key, steps=1)
    result = NovitaClient(key, base_url=cluster.b.base_url).wait_for_task_v3(task_id, wait_for=60)
    assert result.task.status.value == SUCCEED
    on_a = _result(cluster.a, key, task_id)
    on_b = _result(cluster.b, key, task_id)
    assert on_a["task"] == on_b["task"]  # one record, whichever replica answers
    [image] = result.images
    downloaded = httpx.get(image.image_url, timeout=CLIENT_TIMEOUT_S)  # a URL B signed
    assert downloaded.status_code == 200 and downloaded.content.startswith(b"\x89PNG")
    assert cluster.charges(key_id) == {"committed": 1}
    assert cluster.balance(key_id) == 2 * PRICE_PER_IMAGE


def test_a_task_whose_replica_is_killed_mid_run_is_taken_over_and_charged_once(cluster: Cluster) -> None:
    key_id, key = cluster.create_key("taken-over", credits=3 * PRICE_PER_IMAGE)
    cluster.b.stop()  # so that A runs the task
    with webhooks() as hooks:
        task_id = _submit(cluster.a, key, LONG_STEPS, hooks.url)
        _until(cluster, cluster.a, key, task_id, {PROCESSING})
        cluster.a.kill()
        cluster.b.start()
        cluster.b.wait_ready()
        done = _until(cluster, cluster.b, key, task_id, {SUCCEED, FAILED})
        assert done["task"]["status"] == SUCCEED, f"{done}\n{cluster.log_tails()}"
        assert _wait_webhooks(hooks, task_id) == 1
    assert cluster.charges(key_id) == {"committed": 1}
    assert cluster.balance(key_id) == 2 * PRICE_PER_IMAGE


def test_a_task_killed_on_every_run_fails_with_a_reason_refunded_once(cluster: Cluster) -> None:
    key_id, key = cluster.create_key("killed-twice", credits=3 * PRICE_PER_IMAGE)
    cluster.b.stop()
    with webhooks() as hooks:
        task_id = _submit(cluster.a, key, LONG_STEPS, hooks.url)
        _until(cluster, cluster.a, key, task_id, {PROCESSING})
        cluster.a.kill()  # the first run dies
        cluster.b.start()
        cluster.b.wait_ready()
        # B takes it over after A's lease ends: its second run (a second claim), running.
        deadline = time.monotonic() + TASK_DEADLINE_S
        while _stored(cluster, task_id) != (PROCESSING, 2):
            assert _stored(cluster, task_id)[0] not in (SUCCEED, FAILED), cluster.log_tails()
            assert time.monotonic() < deadline, f"{_stored(cluster, task_id)}\n{cluster.log_tails()}"
            time.sleep(0.05)
        cluster.b.kill()  # the second (last allowed) run dies too
        cluster.a.start()
        cluster.a.wait_ready()
        done = _until(cluster, cluster.a, key, task_id, {SUCCEED, FAILED})
        assert done["task"]["status"] == FAILED, done
        assert done["task"]["reason"], done
        assert _wait_webhooks(hooks, task_id) == 1
    assert cluster.charges(key_id) == {"refunded": 1}
    assert cluster.balance(key_id) == 3 * PRICE_PER_IMAGE
