"""Outputs every replica serves: one outputs folder, one URL signing key; and two apps on one
Redis that count request windows and duplicates together, as replicas do.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from server.app import create_app
from server.keystore import StoreUnavailable
from server.redis_link import RedisLink
from server.settings import Settings
from server.settings_loading import SettingsError, load_settings
from server.shared_state import output_storage
from server.storage.local import LocalStorage
from tests.redis_server import RedisServer, redis_server
from tests.unit.conftest import make_state

KEY = "run-1/0.png"
EXPLICIT = "an explicit signing key of 32 bytes or more"


@pytest.fixture(scope="module")
def redis_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def shared(redis_instance: RedisServer) -> Iterator[RedisServer]:
    redis_instance.flush()
    yield redis_instance


def _storage(data: Path, link: RedisLink | None, **storage: str) -> LocalStorage:
    settings = msgspec.convert({"data_dir": str(data), "storage": storage}, Settings)
    return output_storage(settings, link)


def _query(path: str) -> tuple[str, int, str]:
    key, query = path.removeprefix("/v3/files/").split("?")
    fields = dict(part.split("=") for part in query.split("&"))
    return key, int(fields["expires"]), fields["signature"]


def _verifies(storage: LocalStorage, path: str) -> bool:
    return storage.verify(*_query(path))


def test_replicas_on_one_redis_sign_with_one_key(shared: RedisServer, tmp_path: Path) -> None:
    links = [RedisLink(shared.url, timeout_s=1.0, retry_after_s=1.0) for _ in range(2)]
    first = _storage(tmp_path / "a", links[0])
    second = _storage(tmp_path / "b", links[1])
    assert _verifies(second, first.signed_path(KEY, 60))
    assert _verifies(first, second.signed_path(KEY, 60))
    assert not (tmp_path / "a" / "url-signing.key").exists()  # the key lives in Redis only
    # An explicit key wins over the one in Redis: replicas configured alike agree on it.
    explicit = _storage(tmp_path / "c", links[0], url_signing_key=EXPLICIT)
    assert not _verifies(explicit, first.signed_path(KEY, 60))
    assert _verifies(explicit, _storage(tmp_path / "d", None, url_signing_key=EXPLICIT).signed_path(KEY, 60))
    for link in links:
        link.close()


def test_without_redis_each_data_dir_keeps_its_own_key(tmp_path: Path) -> None:
    first, second = _storage(tmp_path / "a", None), _storage(tmp_path / "b", None)
    assert (tmp_path / "a" / "url-signing.key").exists()
    assert not _verifies(second, first.signed_path(KEY, 60))
    assert _verifies(_storage(tmp_path / "a", None), first.signed_path(KEY, 60))  # kept across restarts
    assert first.root == tmp_path / "a" / "outputs"


def test_a_replica_started_while_redis_is_away_signs_once_it_is_back(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        server.stop()
        link = RedisLink(server.url, timeout_s=0.5, retry_after_s=0.2)
        storage = _storage(tmp_path / "a", link)  # building it needs no Redis
        with pytest.raises(StoreUnavailable) as down:
            storage.signed_path(KEY, 60)
        assert down.value.status == 503 and down.value.retry_after is not None
        server.start()
        deadline = time.monotonic() + 15.0
        while True:
            try:
                path = storage.signed_path(KEY, 60)
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        other = RedisLink(server.url, timeout_s=1.0, retry_after_s=1.0)
        assert _verifies(_storage(tmp_path / "b", other), path)
        link.close()
        other.close()


def test_the_output_settings_come_from_the_environment(tmp_path: Path) -> None:
    key_file = tmp_path / "signing"
    key_file.write_text(EXPLICIT + "\n")
    settings = load_settings(
        environ={
            "OMNISERVE_STORAGE__OUTPUTS_DIR": str(tmp_path / "nfs"),
            "OMNISERVE_STORAGE__URL_SIGNING_KEY_FILE": str(key_file),
        }
    )
    assert settings.storage.outputs_dir == str(tmp_path / "nfs")
    assert settings.storage.url_signing_key == EXPLICIT
    with pytest.raises(SettingsError, match="url_signing_key"):
        load_settings(environ={"OMNISERVE_STORAGE__URL_SIGNING_KEY": "short"})


def test_sweeps_of_a_shared_folder_by_several_replicas_do_not_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another replica's sweep may delete a folder between this one's listing and its look
    at the folder: it is skipped, and the rest are swept."""
    storage = LocalStorage(tmp_path / "outputs", b"k" * 32)
    for name in ("gone", "old", "fresh"):
        storage.put(f"{name}/0.png", b"png")
    listing = sorted(storage.root.iterdir())  # the listing this replica took
    shutil.rmtree(storage.root / "gone")  # then another replica removed a folder
    listed = Path.iterdir

    def stale_listing(path: Path) -> Iterator[Path]:
        return iter(listing) if path == storage.root else listed(path)

    monkeypatch.setattr(Path, "iterdir", stale_listing)
    now = time.time()
    assert storage.cleanup_expired(0.0, now=now + 10) == 2
    monkeypatch.undo()
    assert list(storage.root.iterdir()) == []


async def test_two_replicas_share_outputs_windows_and_the_duplicate_filter(shared: RedisServer, tmp_path: Path) -> None:
    outputs = str(tmp_path / "shared-outputs")
    states = [
        make_state(tmp_path / name, store_url=shared.url, storage={"outputs_dir": outputs}) for name in ("a", "b")
    ]
    info, key = states[0].keystore.create("app")
    states[0].keystore.set_limits(info.id, 1, None)  # one request an hour, in each family
    auth = {"Authorization": f"Bearer {key}"}
    image = {"model": "fake-sd", "prompt": "a red barn", "size": "128x128", "steps": 1}
    async with AsyncTestClient(create_app(states[0])) as first, AsyncTestClient(create_app(states[1])) as second:
        for state in states:
            await state.load_task  # type: ignore[misc]
        made = await first.post("/v1/images/generations", json=image, headers=auth)
        assert made.status_code == 200, made.text
        url = made.json()["data"][0]["url"]
        served = await second.get(url.removeprefix("http://testserver.local"))
        assert served.status_code == 200 and served.headers["content-type"] == "image/png"

        refused = await second.post("/v1/images/generations", json=image, headers=auth)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
        assert int(refused.headers["retry-after"]) > 0

        states[0].keystore.set_limits(info.id, None, None)  # the duplicate filter holds without windows
        body = {"key": key, "prompt": "the same request on two replicas", "num_inference_steps": 1}
        assert (await first.post("/api/v3/text2img", json=body)).status_code == 200
        again = await second.post("/api/v3/text2img", json=body)
        assert again.status_code == 429 and "30 seconds" in again.json()["tips"]
        assert int(again.headers["retry-after"]) > 0
