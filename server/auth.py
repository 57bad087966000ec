"""Who may call: API keys from the key store or settings, in any of the header forms clients use."""

from __future__ import annotations

import hmac
import time
from typing import NamedTuple

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard

from engines.admission import lease_owner
from engines.workpools import WorkPool, run_in
from schemas.errors import ApiError, ErrorCode
from server.accounts import STATIC_KEY_PREFIX
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


def static_key_id(key: str) -> str:
    """A key from settings' own stable id, from its hash: each static key has its own tasks
    and request windows, and the id names the key in logs and spans without revealing it.
    Stored ids are 12 hex digits, so a ``static-`` id never names a stored key."""
    return STATIC_KEY_PREFIX + hash_key(key).hex()[:12]


class Identity(NamedTuple):
    key_id: str
    admin: bool


class Authenticator:
    def __init__(
        self,
        store: KeyStore,
        static_keys: list[str],
        *,
        open_when_no_keys: bool,
        static_admin_keys: list[str] | None = None,
    ) -> None:
        self.store = store
        self._static = [(hash_key(key), Identity(static_key_id(key), False)) for key in static_keys if key]
        self._static += [(hash_key(key), Identity(static_key_id(key), True)) for key in static_admin_keys or [] if key]
        self.open_when_no_keys = open_when_no_keys
        self._keys_present = False
        self._checked_at = float("-inf")

    def is_open(self) -> bool:
        """Whether requests are served without a key right now (no keys exist, and openness is allowed)."""
        return self.open_when_no_keys and not self.keys_configured()

    def keys_configured(self) -> bool:
        if self._static:
            return True
        now = time.monotonic()
        if now - self._checked_at > _KEYS_PRESENT_TTL_S:
            self._keys_present = self.store.has_active_keys()
            self._checked_at = now
        return self._keys_present

    def authenticate(self, key: str | None) -> str | None:
        """The caller's key id (``static-...`` for keys from settings), None when open."""
        identity = self.identify(key)
        return identity.key_id if identity is not None else None

    async def checked(self, key: str | None) -> Identity | None:
        """`identify` for the event loop: a network store's wait (at most its timeout) is a thread's."""
        if self.store.remote:
            return await run_in(WorkPool.NETWORK, self.identify, key)
        return self.identify(key)

    async def checked_id(self, key: str | None) -> str | None:
        """`authenticate` for the event loop."""
        identity = await self.checked(key)
        return identity.key_id if identity is not None else None

    def identify(self, key: str | None) -> Identity | None:
        """Who the key is and its role; None when the server is open."""
        if not self.keys_configured():
            if self.open_when_no_keys:
                return None
            raise ApiError(ErrorCode.INVALID_API_KEY, "This server has no API keys configured.")
        if key is None:
            raise ApiError(ErrorCode.MISSING_API_KEY, "No API key given; send 'Authorization: Bearer <key>'.")
        digest = hash_key(key)
        # Every static hash is compared, so the time taken does not tell which one matched.
        matched = [identity for known, identity in self._static if hmac.compare_digest(digest, known)]
        if matched:
            return matched[0]
        stored = self.store.identify(key)
        if stored is None:
            raise ApiError(ErrorCode.INVALID_API_KEY, "The API key is invalid or revoked.")
        return Identity(*stored)


def key_guard(authenticator: Authenticator) -> Guard:
    async def require_api_key(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        """The guard of every key-guarded router (async: a sync guard would run in a thread)."""
        with step("authenticate") as span:
            identity = await authenticator.checked(presented_key(connection))
            key_id = identity.key_id if identity is not None else None
            if key_id is not None and span.is_recording():
                span.set_attribute("omniserve.api_key_id", key_id)
        connection.scope["state"]["api_key_id"] = key_id
        # On an open server there is no key, and every caller is the operator.
        connection.scope["state"][ADMIN_STATE] = identity is None or identity.admin
        # Model leases taken while serving this request take their turns as this key's.
        lease_owner.set(key_id)

    return require_api_key


ADMIN_STATE = "api_key_admin"


async def require_admin(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """After the key guard: the operator routes take admin keys only (``keys create --admin``)."""
    if not connection.scope["state"].get(ADMIN_STATE, False):
        raise ApiError(ErrorCode.ACCESS_DENY, "This route needs an admin API key.")
