"""Two omniserve processes (replicas) on one real redis-server, for the tests of what replicas
share: keys, balances, outputs and (as they come) tasks and queues.

Each replica is a real `python -m server serve` process (so a test can kill -9 it) with its own
data dir (so its own replica id, `<data_dir>/replica-id`) and port, and one settings file of the
same shape: the same catalog, `store_url` naming the shared Redis, one outputs folder
(`storage.outputs_dir`), metered accounts. The catalog is `demo-sd` (built in about 6 s,
loaded in about 5) and the tiny `demo-esrgan` upscaler: few real models keep each start short on a
2-core machine; images are priced per image (`accounts.price_per_image`).

The Redis keeps what it is told on disk (an append-only file, synced on every write, in its
workdir), as a deployment's would: a stop and start of Redis, or a kill -9 of it, loses nothing,
so a test sees the same keys and balances after it comes back.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import httpx
import redis
import tomli_w

from engines.base import ModelKind, ModelSpec
from server.keystore_redis import PREFIX
from tests.redis_server import RedisServer, _free_port

MODEL = "demo-sd"
# A second, tiny model (an RRDBNet upscaler, built in well under a second), so that replicas can
# run different models (cluster.serve).
UPSCALER = "demo-esrgan"
PRICE_PER_IMAGE = 1.0
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
CLI_TIMEOUT_S = 60.0
# After a failed store call a replica answers 503 at once for this long, then tries Redis again:
# short, so that a test sees service resume soon after Redis is back.
STORE_RETRY_AFTER_S = 1.0


def build_catalog(root: Path) -> list[ModelSpec]:
    """The replicas' catalog under ``root``: demo-sd and demo-esrgan, built once (a complete
    build is found and kept)."""
    from engines.image.demo import _BUILDERS, BUILD_VERSION  # builders of the demo catalog
    from engines.image.esrgan_demo import ESRGAN_DEMO_FILE
    from engines.model_build import build_atomically

    root.mkdir(parents=True, exist_ok=True)
    for name in (MODEL, UPSCALER):
        build_atomically(root / name, _BUILDERS[name], BUILD_VERSION)
    return [
        ModelSpec(name=MODEL, kind=ModelKind.IMAGE, engine="diffusers", path=str(root / MODEL)),
        ModelSpec(
            name=UPSCALER, kind=ModelKind.UPSCALER, engine="esrgan", path=str(root / UPSCALER / ESRGAN_DEMO_FILE)
        ),
    ]


def shared_outputs_settings(outputs_dir: Path) -> dict[str, Any]:
    """The settings that point every replica at one outputs folder, so that a replica serves
    the files another one made. The key that signs their URLs is left unset: with a Redis
    store_url every replica reads the one made once in Redis."""
    return {"storage": {"outputs_dir": str(outputs_dir)}}


def _spec_settings(spec: ModelSpec) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": spec.name, "kind": spec.kind.value, "engine": spec.engine, "path": spec.path}
    if spec.options:
        entry["options"] = spec.options
    return entry


class Replica:
    """One server process; ``start``, ``stop`` (SIGTERM), ``kill`` (SIGKILL) and ``restart``
    keep its port and data dir, so it comes back as the same replica."""

    def __init__(self, name: str, workdir: Path, settings: dict[str, Any]) -> None:
        self.name = name
        self.port = _free_port()
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "omniserve.toml"
        self.log_path = workdir / "server.log"
        settings = {**settings, "cluster": {**settings.get("cluster", {}), "advertise_url": self.base_url}}
        self.config_path.write_text(tomli_w.dumps(settings))
        # Only the harness's settings: none inherited from the environment the tests run in.
        inherited = {name: value for name, value in os.environ.items() if not name.startswith("OMNISERVE_")}
        self.env = {
            **inherited,
            "OMNISERVE_CONFIG": str(self.config_path),
            "OMNISERVE_DATA_DIR": str(self.data_dir),
            "OMNISERVE_PORT": str(self.port),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def replica_id(self) -> str:
        """Its id among the replicas (server/keystore.py replica_id), written at its first start."""
        return (self.data_dir / "replica-id").read_text().strip()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Launch the process (ready or not: see ``wait_ready``)."""
        assert not self.running, f"replica {self.name} is already running"
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "server", "serve"], env=self.env, stdout=log, stderr=log
            )

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until /ready answers 200; fails with the log's tail if the process exits or the
        time runs out."""
        process = self._process
        assert process is not None, f"replica {self.name} was not started"
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"replica {self.name} exited with {process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica {self.name} not ready in {timeout_s:g} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM (the server drains and exits), then SIGKILL if it takes too long."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def kill(self) -> None:
        """kill -9: no drain, no cleanup, whatever it was doing is cut off."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    def restart(self, *, hard: bool = False) -> None:
        """Stopped (killed with ``hard``), started again, ready."""
        self.kill() if hard else self.stop()
        self.start()
        self.wait_ready()

    def cli(self, *args: str) -> str:
        """`python -m server ARGS` with this replica's settings and data dir (e.g. `keys ...`
        on the shared store, as an operator on this replica's host would run it)."""
        result = subprocess.run(
            [sys.executable, "-m", "server", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"omniserve {' '.join(args)} exited {result.returncode}: {result.stderr[-2000:]}")
        return result.stdout

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


class Cluster:
    """The Redis and the replicas (``a`` and ``b``), plus what the tests do with the store."""

    def __init__(self, redis_server: RedisServer, replicas: list[Replica], outputs_dir: Path) -> None:
        self.redis = redis_server
        self.replicas = replicas
        self.outputs_dir = outputs_dir
        self.admin_key = ""  # an admin key, for the /admin routes

    @property
    def a(self) -> Replica:
        return self.replicas[0]

    @property
    def b(self) -> Replica:
        return self.replicas[1]

    def log_tails(self, chars: int = 2000) -> str:
        """Every replica's recent log, for an assertion's message."""
        return "\n".join(f"--- replica {replica.name}:\n{replica.log_tail(chars)}" for replica in self.replicas)

    def ensure_up(self) -> None:
        """Redis and every replica running and ready again, whatever a test left stopped."""
        if not self.redis.running:
            self.redis.start()
        for replica in self.replicas:
            if not replica.running:
                replica.start()
        for replica in self.replicas:
            replica.wait_ready()

    # Redis.

    @contextmanager
    def db(self) -> Iterator[redis.Redis]:
        """A client of the shared Redis, to read what the replicas wrote."""
        client = redis.Redis.from_url(self.redis.url, socket_timeout=5, socket_connect_timeout=5, decode_responses=True)
        try:
            yield client
        finally:
            client.close()

    # Keys, through the keys CLI on the shared store.

    def create_key(self, name: str, *, credits: float | None = None, via: Replica | None = None) -> tuple[str, str]:
        """A new customer key (its id and the key), with a balance of ``credits`` (None:
        unmetered)."""
        replica = via or self.a
        created = replica.cli("keys", "create", name)
        key_id = re.search(r"^id:\s+(\S+)", created, re.MULTILINE)
        key = re.search(r"^key:\s+(\S+)", created, re.MULTILINE)
        assert key_id and key, created
        if credits is not None:
            replica.cli("keys", "credit", key_id.group(1), "--set", repr(credits))
        return key_id.group(1), key.group(1)

    def revoke(self, key_id: str, *, via: Replica) -> None:
        via.cli("keys", "revoke", key_id)

    def balance(self, key_id: str) -> float | None:
        with self.db() as db:
            credits = db.hget(f"{PREFIX}key:{key_id}", "credits")
        return None if credits is None else float(credits)

    def charges(self, key_id: str) -> dict[str, int]:
        """The key's charges in the store, counted by state (reserved, committed, refunded)."""
        counts: dict[str, int] = {}
        with self.db() as db:
            for name in db.scan_iter(match=f"{PREFIX}charge:*", count=1000):
                charge = cast("dict[str, str]", db.hgetall(name))
                if charge.get("key_id") == key_id:
                    counts[charge["state"]] = counts.get(charge["state"], 0) + 1
        return counts

    def open_reservations(self, replica: Replica) -> set[str]:
        """The request ids ``replica`` reserved credits for and has not settled."""
        with self.db() as db:
            return cast("set[str]", db.smembers(f"{PREFIX}open:{replica.replica_id}"))


def persistent_redis(workdir: Path) -> RedisServer:
    """A redis-server that keeps every write in an append-only file in ``workdir``."""
    return RedisServer(workdir, persist=True)


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra``'s values, tables merged key by key."""
    merged = dict(base)
    for name, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(name), dict):
            merged[name] = _merged(merged[name], value)
        else:
            merged[name] = value
    return merged


@contextmanager
def running_cluster(
    workdir: Path,
    catalog: list[ModelSpec],
    *,
    names: tuple[str, ...] = ("a", "b"),
    serve: dict[str, list[str]] | None = None,
    settings: dict[str, Any] | None = None,
) -> Iterator[Cluster]:
    """Redis, then the replicas, started at once and awaited together; all stopped on exit
    (the logs stay in ``workdir``). ``serve``: the catalog models each replica runs, by replica
    name (settings ``cluster.serve``; a replica not named runs all of them). ``settings``: more
    settings for every replica, merged over the harness's own."""
    assert shutil.which("redis-server"), "redis-server is not installed (Debian: apt-get install redis-server)"
    redis_dir = workdir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    outputs_dir = workdir / "outputs"
    outputs_dir.mkdir(parents=True, exist_ok=True)
    store = persistent_redis(redis_dir)
    common: dict[str, Any] = {
        "store_url": store.url,
        "store_retry_after_s": STORE_RETRY_AFTER_S,
        "log_format": "text",
        "accounts": {"price_per_image": PRICE_PER_IMAGE},
        # Short periods, so that a replica that died is found out within seconds.
        "cluster": {"heartbeat_s": 0.5, "lease_s": 2.0},
        "models": [_spec_settings(spec) for spec in catalog],
        **shared_outputs_settings(outputs_dir),
    }
    common = _merged(common, settings or {})
    serving = serve or {}
    replicas: list[Replica] = []
    for name in names:
        own = _merged(common, {"cluster": {"serve": serving[name]}}) if name in serving else common
        replicas.append(Replica(name, workdir / f"replica-{name}", own))
    cluster = Cluster(store, replicas, outputs_dir)
    try:
        store.start()
        # An admin key first: with no key in the store a loopback server would serve openly.
        created = replicas[0].cli("keys", "create", "operator", "--admin")
        admin_key = re.search(r"^key:\s+(\S+)", created, re.MULTILINE)
        assert admin_key, created
        cluster.admin_key = admin_key.group(1)
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready()
        yield cluster
    finally:
        for replica in replicas:
            replica.stop()
        store.stop()
