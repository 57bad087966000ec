"""One real omniserve process per test session, started through its CLI on the demo catalog."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.s3_server import ACCESS_KEY_ID, ALLOWED_BUCKETS, SECRET_ACCESS_KEY, LocalS3, local_s3

READY_TIMEOUT_S = 420


class RunningServer(msgspec.Struct):
    base_url: str
    api_key: str
    data_dir: Path
    log_path: Path

    @property
    def openai_url(self) -> str:
        return f"{self.base_url}/openai/v1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "server", *args], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return result.stdout


@pytest.fixture(scope="session")
def s3() -> Iterator[LocalS3]:
    """The S3-compatible server that the omniserve process uploads custom_storage outputs to."""
    with local_s3() as server:
        yield server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, demo_root: Path, s3: LocalS3) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("omniserve-data")
    # Reuse the session's demo build: the server finds it complete and skips building.
    (data_dir / "models").mkdir()
    (data_dir / "models" / "demo").symlink_to(demo_root)
    port = free_port()
    # Lists are set in TOML: the buckets the tests upload to (s3.allowed_buckets).
    config = data_dir / "omniserve.toml"
    config.write_text(f"[s3]\nallowed_buckets = {json.dumps(ALLOWED_BUCKETS)}\n")
    env = {
        **os.environ,
        "OMNISERVE_CONFIG": str(config),
        "OMNISERVE_DATA_DIR": str(data_dir),
        "OMNISERVE_PORT": str(port),
        # The webhook receivers in these tests listen on loopback.
        "OMNISERVE_TASKS__ALLOW_PRIVATE_URLS": "true",
        # The suite sends more than the default 100 requests an hour with its one key.
        "OMNISERVE_ACCOUNTS__REQUESTS_PER_HOUR": "0",
        "OMNISERVE_ACCOUNTS__REQUESTS_PER_DAY": "0",
        # The suite scrapes /metrics without a key (by default it takes an admin key).
        "OMNISERVE_METRICS__ACCESS": "open",
        # Novassium draws small on the tiny demo model; the answer is still the requested size.
        "OMNISERVE_VENDOR__NOVASSIUM_MAX_SIDE": "256",
        "OMNISERVE_VENDOR__NOVASSIUM_STEPS": "4",
        # Chat images past 64 KiB are refused: an oversize one stays a small request body.
        "OMNISERVE_LIMITS__MAX_CHAT_IMAGE_BYTES": "65536",
        # extra.custom_storage.aws_s3 goes to the local S3 server; the credentials come
        # through boto3's default chain, as they would from a deployment's environment.
        "OMNISERVE_S3__ENDPOINT_URL": s3.endpoint_url,
        "OMNISERVE_S3__ADDRESSING_STYLE": "path",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
    }
    created = _cli("keys", "create", "e2e", env=env)
    match = re.search(r"key: (\S+)", created)
    assert match, created
    log_path = data_dir / "server.log"
    with launched(env, log_path) as base_url:
        yield RunningServer(base_url=base_url, api_key=match.group(1), data_dir=data_dir, log_path=log_path)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scraped(base_url: str) -> Samples:
    """A running server's /metrics, parsed: (sample name, labels) -> value."""
    response = httpx.get(f"{base_url}/metrics", timeout=10)
    response.raise_for_status()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


@contextmanager
def launched(env: dict[str, str], log_path: Path, *args: str) -> Iterator[str]:
    """`python -m server serve [args]` with `env`, logging to `log_path`: its base URL once
    /ready answers 200; stopped with SIGTERM (then killed) on exit."""
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "server", "serve", *args], env=env, stdout=log, stderr=log)
    base_url = f"http://127.0.0.1:{env['OMNISERVE_PORT']}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{base_url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready in {READY_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        yield base_url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
