"""The state a request shares with the other replicas, besides keys and credits: request
windows, the duplicate-request filter, and outputs with the key that signs their URLs.

It follows the key store: with a Redis one (settings' ``store_url``), the windows and the
filter live in that Redis, through the key store's own connection and circuit breaker; with
SQLite, in this process, as for one server.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from server.keystore import KeyStore
from server.recent_requests import RecentRequests, RedisRecent
from server.request_windows import RedisWindows, RequestWindows
from server.settings import Settings
from server.storage.local import LocalStorage
from server.storage.signing_key import url_signing_key

if TYPE_CHECKING:
    from server.redis_link import RedisLink


def store_link(settings: Settings, keystore: KeyStore) -> RedisLink | None:
    """The key store's Redis connection; None for a store in this process."""
    if not settings.store_url:
        return None
    from server.keystore_redis import RedisKeyStore  # redis-py only when it is used

    return keystore.link if isinstance(keystore, RedisKeyStore) else None


def request_windows(link: RedisLink | None) -> RequestWindows | None:
    """Windows shared in Redis; None: the accounts' own, in memory."""
    return None if link is None else RedisWindows(link)


def recent_requests(link: RedisLink | None, name: str) -> RecentRequests | None:
    """A duplicate filter shared in Redis under ``name``; None: its user's own, in memory."""
    return None if link is None else RedisRecent(link, name)


def output_storage(settings: Settings, link: RedisLink | None) -> LocalStorage:
    """Outputs in storage.outputs_dir (a folder the replicas share) or the data dir, signed
    with the key server/storage/signing_key.py picks."""
    data = settings.data_path
    outputs = settings.storage.outputs_dir
    root = Path(outputs).expanduser() if outputs else data / "outputs"
    return LocalStorage(root, url_signing_key(settings.storage.url_signing_key, link, data / "url-signing.key"))
