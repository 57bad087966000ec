from __future__ import annotations

from pathlib import Path

import pytest

from server.keystore import KeyNotFound, SqliteKeyStore


def test_create_verify_revoke(tmp_path: Path) -> None:
    store = SqliteKeyStore(tmp_path / "keys.sqlite3")
    info, key = store.create("ci")
    assert store.verify(key) == info.id
    assert store.verify(key + "x") is None
    assert store.verify("os-nope.secret") is None
    assert store.verify("garbage") is None
    store.revoke(info.id)
    assert store.verify(key) is None
    assert not store.has_active_keys()
    with pytest.raises(KeyNotFound):
        store.revoke(info.id)


def test_rotate_invalidates_the_old_secret(tmp_path: Path) -> None:
    store = SqliteKeyStore(tmp_path / "keys.sqlite3")
    info, old = store.create("svc")
    new = store.rotate(info.id)
    assert new != old
    assert store.verify(old) is None
    assert store.verify(new) == info.id
    assert store.list()[0].rotated_at is not None


def test_only_hashes_are_stored(tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite3"
    store = SqliteKeyStore(path)
    _, key = store.create("secret-holder")
    secret = key.split(".", 1)[1]
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert secret.encode() not in raw
