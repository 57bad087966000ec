"""Who may call: API keys from the key store or settings, in any of the header forms clients use."""

from __future__ import annotations

import hmac
import time

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard

from engines.admission import lease_owner
from schemas.errors import ApiError, ErrorCode
from server.keystore import KeyStore, hash_key
from server.telemetry.spans import step

# How long "are any keys configured?" is cached; a key created from the CLI takes
# effect on a running open server within this time.
_KEYS_PRESENT_TTL_S = 2.0


def presented_key(connection: ASGIConnection) -> str | None:
    """``Authorization: Bearer K``, bare ``Authorization: K`` (Novita's JS SDK) or ``X-API-Key: K``."""
    headers = connection.headers
    value = headers.get("authorization")
    if value:
        scheme, _, rest = value.partition(" ")
        key = rest.strip() if scheme.lower() == "bearer" else value.strip()
        return key or None
    header_key = headers.get("x-api-key")
    return header_key.strip() if header_key else None


class Authenticator:
    def __init__(self, store: KeyStore, static_keys: list[str], *, open_when_no_keys: bool) -> None:
        self.store = store
        self._static_hashes = [hash_key(key) for key in static_keys if key]
        self.open_when_no_keys = open_when_no_keys
        self._keys_present = False
        self._checked_at = float("-inf")

    def keys_configured(self) -> bool:
        if self._static_hashes:
            return True
        now = time.monotonic()
        if now - self._checked_at > _KEYS_PRESENT_TTL_S:
            self._keys_present = self.store.has_active_keys()
            self._checked_at = now
        return self._keys_present

    def authenticate(self, key: str | None) -> str | None:
        """The caller's key id (``"static"`` for keys from settings, None when open)."""
        if not self.keys_configured():
            if self.open_when_no_keys:
                return None
            raise ApiError(ErrorCode.INVALID_API_KEY, "This server has no API keys configured.")
        if key is None:
            raise ApiError(ErrorCode.MISSING_API_KEY, "No API key given; send 'Authorization: Bearer <key>'.")
        digest = hash_key(key)
        if any(hmac.compare_digest(digest, known) for known in self._static_hashes):
            return "static"
        key_id = self.store.verify(key)
        if key_id is None:
            raise ApiError(ErrorCode.INVALID_API_KEY, "The API key is invalid or revoked.")
        return key_id


def key_guard(authenticator: Authenticator) -> Guard:
    async def require_api_key(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        """The guard of every key-guarded router (async: a sync guard would run in a thread)."""
        with step("authenticate") as span:
            key_id = authenticator.authenticate(presented_key(connection))
            if key_id is not None and span.is_recording():
                span.set_attribute("omniserve.api_key_id", key_id)
        connection.scope["state"]["api_key_id"] = key_id
        # Model leases taken while serving this request take their turns as this key's.
        lease_owner.set(key_id)

    return require_api_key
