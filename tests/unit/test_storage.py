from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from server.storage.local import InvalidKey, LocalStorage, load_or_create_secret

TASK = "0b7f6c1e-3a52-4c4e-9d2a-5f1f0c0e9a11"
NOW = 1_700_000_000.0


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "files", load_or_create_secret(tmp_path / "secret"))


def _parse(signed: str) -> tuple[str, int, str]:
    parts = urlsplit(signed)
    query = parse_qs(parts.query)
    return parts.path.removeprefix("/v3/files/"), int(query["expires"][0]), query["signature"][0]


def test_put_sign_verify(storage: LocalStorage) -> None:
    key = f"{TASK}/image_0.png"
    storage.put(key, b"png bytes")
    storage.put(key, b"new bytes")  # replacing is atomic and leaves no temporary file
    path = storage.open_path(key)
    assert path is not None
    assert path.read_bytes() == b"new bytes"
    assert [p.name for p in path.parent.iterdir()] == ["image_0.png"]

    signed = storage.signed_path(key, 3600, now=NOW)
    assert signed.startswith(f"/v3/files/{key}?expires={int(NOW) + 3600}&signature=")
    url_key, expires, signature = _parse(signed)
    assert url_key == key
    assert storage.verify(key, expires, signature, now=NOW + 10)
    assert storage.open_path(f"{TASK}/missing.png") is None


def test_tampered_or_expired_urls_are_refused(storage: LocalStorage, tmp_path: Path) -> None:
    key = f"{TASK}/image_0.png"
    storage.put(key, b"x")
    _, expires, signature = _parse(storage.signed_path(key, 60, now=NOW))
    assert not storage.verify(f"{TASK}/image_1.png", expires, signature, now=NOW)
    assert not storage.verify(key, expires + 3600, signature, now=NOW)
    assert not storage.verify(key, expires, signature[:-1] + ("0" if signature[-1] != "0" else "1"), now=NOW)
    assert not storage.verify(key, expires, "é" * 64, now=NOW)
    assert not storage.verify(key, expires, signature, now=NOW + 60)  # expired
    other = LocalStorage(tmp_path / "other", b"k" * 32)
    assert not other.verify(key, expires, signature, now=NOW)  # another server's secret


@pytest.mark.parametrize(
    "key",
    [
        "../secret",
        f"{TASK}/../../secret.png",
        f"/{TASK}/a.png",
        f"{TASK}/.hidden.png",
        f"{TASK}/a/b.png",
        f"{TASK}\\a.png",
        f"{TASK}/a.png\n",
        f"{TASK}/a.png\x00",
        f"{TASK}/a",
        "..",
        f"{TASK}/a.PNG/",
    ],
)
def test_traversal_and_odd_keys_are_rejected(storage: LocalStorage, key: str) -> None:
    with pytest.raises(InvalidKey):
        storage.put(key, b"x")
    with pytest.raises(InvalidKey):
        storage.signed_path(key, 60)
    assert storage.open_path(key) is None
    assert not storage.verify(key, int(NOW) + 60, "0" * 64, now=NOW)


def test_cleanup_removes_only_old_task_folders(storage: LocalStorage) -> None:
    old, fresh, mixed = "old-task", "fresh-task", "mixed-task"
    for task in (old, fresh, mixed):
        storage.put(f"{task}/a.png", b"x")
    for path in [storage.root / old / "a.png", storage.root / old, storage.root / mixed / "a.png"]:
        os.utime(path, (NOW - 7200, NOW - 7200))
    storage.put(f"{mixed}/b.png", b"x")  # a newer file keeps the whole folder
    for path in [storage.root / fresh / "a.png", storage.root / mixed / "b.png"]:
        os.utime(path, (NOW - 60, NOW - 60))
    assert storage.cleanup_expired(3600, now=NOW) == 1
    assert sorted(p.name for p in storage.root.iterdir()) == [fresh, mixed]
    assert storage.open_path(f"{mixed}/a.png") is not None


def test_secret_is_created_once_with_owner_only_permissions(tmp_path: Path) -> None:
    path = tmp_path / "state" / "url-secret"
    secret = load_or_create_secret(path)
    assert len(secret) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == secret
    assert sorted(p.name for p in path.parent.iterdir()) == ["url-secret"]
    with pytest.raises(ValueError):
        LocalStorage(tmp_path / "files", b"short")
