"""/v3 tasks across real process stops: kill -9 mid-task, a clean SIGTERM with a backlog, and
a second process on the same data dir. Each test runs ``tests/task_server.py`` (the real app
on fake engines, no models to load) and a real HTTP receiver for webhooks."""

from __future__ import annotations

import http.server
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.keystore import SqliteKeyStore
from tests.e2e.conftest import free_port

pytestmark = pytest.mark.e2e

REQUEST = {"model_name": "fake-sd", "prompt": "a barn", "width": 128, "height": 128, "steps": 20, "seed": 1}


class Receiver:
    """Webhook bodies POSTed to a real server on loopback."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def statuses(self, task_id: str) -> list[str]:
        return [b["payload"]["task"]["status"] for b in self.bodies if b["payload"]["task"]["task_id"] == task_id]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    yield hook
    hook.server.shutdown()


class Server:
    def __init__(self, data_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "OMNISERVE_DATA_DIR": str(data_dir),
            "OMNISERVE_PORT": str(self.port),
            "OMNISERVE_TASKS__ALLOW_PRIVATE_URLS": "true",
            "OMNISERVE_TASKS__WORKERS": "1",
            "OMNISERVE_ACCOUNTS__REQUESTS_PER_HOUR": "0",
            "OMNISERVE_ACCOUNTS__REQUESTS_PER_DAY": "0",
            **env,
        }
        self.log_path = data_dir / f"server-{self.port}.log"

    def start(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("wb") as log:
            return subprocess.Popen([sys.executable, "-m", "tests.task_server"], env=self.env, stdout=log, stderr=log)

    @contextmanager
    def running(self) -> Iterator[subprocess.Popen[bytes]]:
        process = self.start()
        try:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, self.log_path.read_text()[-3000:]
                try:
                    if httpx.get(f"{self.base_url}/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, self.log_path.read_text()[-3000:]
                time.sleep(0.2)
            yield process
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


def submit(base_url: str, key: str, webhook: str | None = None, **request: Any) -> str:
    body: dict[str, Any] = {"request": {**REQUEST, **request}}
    if webhook is not None:
        body["extra"] = {"webhook": {"url": webhook}}
    response = httpx.post(f"{base_url}/v3/async/txt2img", json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    return str(response.json()["task_id"])


def result(base_url: str, key: str, task_id: str) -> dict[str, Any]:
    response = httpx.get(
        f"{base_url}/v3/async/task-result", params={"task_id": task_id}, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_for(check: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def metered_key(data_dir: Path, credits: float) -> tuple[str, str]:
    store = SqliteKeyStore(data_dir / "keys.sqlite3")
    try:
        info, key = store.create("restarts")
        store.set_credits(info.id, credits)
    finally:
        store.close()
    return info.id, key


def credits_and_charge(data_dir: Path, key_id: str, task_id: str) -> tuple[float, list[tuple[str, float]]]:
    with sqlite3.connect(data_dir / "keys.sqlite3") as db:
        credits = db.execute("SELECT credits FROM api_keys WHERE id = ?", (key_id,)).fetchone()[0]
        charges = db.execute("SELECT state, amount FROM charges WHERE request_id = ?", (task_id,)).fetchall()
    return float(credits), [(str(state), float(amount)) for state, amount in charges]


def task_statuses(data_dir: Path) -> dict[str, str]:
    with sqlite3.connect(data_dir / "tasks.sqlite3") as db:
        return dict(db.execute("SELECT task_id, status FROM tasks").fetchall())


def test_kill_9_mid_task_fails_it_refunds_once_and_sends_its_webhook(tmp_path: Path, receiver: Receiver) -> None:
    key_id, key = metered_key(tmp_path, 10)
    server = Server(tmp_path, TEST_STEP_S="0.5")
    with server.running() as process:
        task_id = submit(server.base_url, key, receiver.url)
        wait_for(lambda: result(server.base_url, key, task_id)["task"]["status"] == "TASK_STATUS_PROCESSING")
        assert credits_and_charge(tmp_path, key_id, task_id)[0] == 9  # reserved
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    assert task_statuses(tmp_path)[task_id] == "TASK_STATUS_PROCESSING"  # what the crash left

    with server.running():
        done = result(server.base_url, key, task_id)
        assert done["task"]["status"] == "TASK_STATUS_FAILED"
        assert "restarted" in done["task"]["reason"]
        wait_for(lambda: receiver.statuses(task_id))
        assert receiver.statuses(task_id) == ["TASK_STATUS_FAILED"]
        credits, charges = credits_and_charge(tmp_path, key_id, task_id)
        assert credits == 10  # refunded, and only once
        assert [state for state, _ in charges] == ["refunded"]


def test_sigterm_lets_the_running_task_finish_and_requeues_the_backlog(tmp_path: Path) -> None:
    _, key = metered_key(tmp_path, 100)
    # Three workers, one device turn: two backlog tasks are held by workers waiting for the engine.
    server = Server(tmp_path, TEST_STEP_S="0.1", OMNISERVE_TASKS__DRAIN_GRACE_S="30", OMNISERVE_TASKS__WORKERS="3")
    with server.running() as process:
        running = submit(server.base_url, key, steps=15)
        wait_for(lambda: result(server.base_url, key, running)["task"]["status"] == "TASK_STATUS_PROCESSING")
        backlog = [submit(server.base_url, key, seed=i) for i in range(3)]
        time.sleep(0.5)  # the workers take two of them, which wait for the device
        assert {result(server.base_url, key, t)["task"]["status"] for t in backlog} == {"TASK_STATUS_QUEUED"}
        process.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal it caught once its shutdown is done.
        assert process.wait(timeout=40) in (0, -signal.SIGTERM)
    statuses = task_statuses(tmp_path)
    assert statuses[running] == "TASK_STATUS_SUCCEED"  # finished within the grace
    assert [statuses[t] for t in backlog] == ["TASK_STATUS_QUEUED"] * 3  # not started, not failed

    with server.running():
        for task_id in backlog:
            wait_for(lambda t=task_id: result(server.base_url, key, t)["task"]["status"] == "TASK_STATUS_SUCCEED")


def test_a_second_process_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    _, key = metered_key(tmp_path, 100)
    first = Server(tmp_path, TEST_STEP_S="0.05")
    with first.running():
        task_id = submit(first.base_url, key, steps=20)
        second = Server(tmp_path)
        process = second.start()
        assert process.wait(timeout=60) == 2
        assert "another omniserve process" in second.log_path.read_text()
        wait_for(lambda: result(first.base_url, key, task_id)["task"]["status"] == "TASK_STATUS_SUCCEED")
