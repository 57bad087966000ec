"""The key store in Redis, shared by every replica of the server (settings' ``store_url``).

Layout, under the ``omniserve:`` prefix:

- ``key:<id>``: a hash per key: name, the SHA-256 of the key (hex), created_at, rotated_at,
  revoked_at, admin, and its account: credits (absent: unmetered), subscription_active,
  hour_limit and day_limit (absent: the settings' defaults).
- ``keys``: every key id, scored by its creation time (the listing order).
- ``active``: the ids of the keys not revoked.
- ``charge:<request id>``: a reservation: key_id, amount, state, the replica that made it,
  created_at, settled_at.
- ``open:<replica>``: the request ids a replica reserved and nobody settled yet. Each replica
  (its data dir: settings' ``data_dir`` holds its id) reconciles only its own at startup, so a
  restarting replica never refunds the requests another one is serving.

Everything that reads and then writes (reserve, settle, add_credits, the updates of an active
key, revoke) is one Lua script, which Redis runs alone: two replicas can never both spend the
same credits, and a request id is settled at most once. Nothing is cached in the process, so
a revoke or rotate is seen by every replica on its next lookup. Scripts build key names from
the prefix, so the store needs a standalone Redis (or one primary), not a Redis Cluster.

Calls reach Redis through a `RedisLink` (server/redis_link.py): a Redis that is away raises
`StoreUnavailable` within ``timeout_s``, and at once for ``retry_after_s`` after that. The link
is ``link``, for the other shared state of the replica to use the same connection and breaker.
"""

from __future__ import annotations

import hmac
import secrets
import time
from typing import cast

from server.keystore import (
    COMMITTED,
    REFUNDED,
    RESERVED,
    InsufficientCredits,
    KeyAccount,
    KeyInfo,
    KeyNotFound,
    hash_key,
    key_id_of,
    new_key,
)
from server.redis_link import PREFIX, RedisLink

__all__ = ["PREFIX", "RedisKeyStore"]

# Runs only on a key that exists and is not revoked. ARGV: field, value pairs; an empty value
# removes the field (None: unmetered credits, the default limits). 0 when the key is not active.
_UPDATE_ACTIVE = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'revoked_at') == 1 then
    return 0
end
for i = 1, #ARGV, 2 do
    if ARGV[i + 1] == '' then
        redis.call('HDEL', KEYS[1], ARGV[i])
    else
        redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    end
end
return 1
"""

# KEYS: the key, the active set. ARGV: the id, the time. 0 when the key is not active.
_REVOKE = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'revoked_at') == 1 then
    return 0
end
redis.call('HSET', KEYS[1], 'revoked_at', ARGV[2])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""

# ARGV: the amount. The new balance (a string: Lua numbers would reach Python as integers),
# false when the key is not active.
_ADD_CREDITS = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'revoked_at') == 1 then
    return false
end
return redis.call('HINCRBYFLOAT', KEYS[1], 'credits', ARGV[1])
"""

# KEYS: the key, the charge, this replica's open set. ARGV: the amount, minus the amount, the
# request id, the key id, the time, the replica. {'unmetered'}, {'paid', balance} or {'short', balance}.
_RESERVE = """
local credits = redis.call('HGET', KEYS[1], 'credits')
if not credits then
    return {'unmetered'}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
    return {'paid', credits}
end
if tonumber(credits) < tonumber(ARGV[1]) then
    return {'short', credits}
end
local left = redis.call('HINCRBYFLOAT', KEYS[1], 'credits', ARGV[2])
redis.call('HSET', KEYS[2], 'key_id', ARGV[4], 'amount', ARGV[1], 'state', 'reserved')
redis.call('HSET', KEYS[2], 'created_at', ARGV[5], 'replica', ARGV[6])
redis.call('SADD', KEYS[3], ARGV[3])
return {'paid', left}
"""

# KEYS: the charge. ARGV: '1' to refund, what to keep ('' for all of it), the time, the
# request id, the key names' prefix. The reservation may be another replica's. 1 when a reservation was settled, else 0.
_SETTLE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'reserved' then
    return 0
end
local key_id = redis.call('HGET', KEYS[1], 'key_id')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'amount'))
local kept = reserved
if ARGV[1] == '1' then
    kept = 0
    redis.call('HSET', KEYS[1], 'state', 'refunded', 'settled_at', ARGV[3])
else
    if ARGV[2] ~= '' then
        kept = math.min(math.max(tonumber(ARGV[2]), 0), reserved)
    end
    redis.call('HSET', KEYS[1], 'state', 'committed', 'amount', string.format('%.17g', kept), 'settled_at', ARGV[3])
end
redis.call('SREM', ARGV[5] .. 'open:' .. redis.call('HGET', KEYS[1], 'replica'), ARGV[4])
local key = ARGV[5] .. 'key:' .. key_id
-- A key made unmetered since the reservation stays unmetered (as NULL + x is in SQL).
if reserved > kept and redis.call('HEXISTS', key, 'credits') == 1 then
    redis.call('HINCRBYFLOAT', key, 'credits', string.format('%.17g', reserved - kept))
end
return 1
"""

assert (RESERVED, COMMITTED, REFUNDED) == ("reserved", "committed", "refunded")  # the scripts spell them


def _texts(values: object) -> list[str | None]:
    """A reply of several fields (strings: the client decodes replies)."""
    return cast("list[str | None]", values)


def _float(value: str | None) -> float | None:
    return None if value is None else float(value)


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)


class RedisKeyStore:
    remote = True

    def __init__(self, url: str, *, replica: str, timeout_s: float, retry_after_s: float, prefix: str = PREFIX) -> None:
        self.link = RedisLink(url, timeout_s=timeout_s, retry_after_s=retry_after_s, prefix=prefix)
        self._prefix = prefix
        self._replica = replica
        self._open = f"{prefix}open:{replica}"
        self._update_active = self.link.script(_UPDATE_ACTIVE)
        self._revoke = self.link.script(_REVOKE)
        self._add_credits = self.link.script(_ADD_CREDITS)
        self._reserve = self.link.script(_RESERVE)
        self._settle = self.link.script(_SETTLE)

    def _key(self, key_id: str) -> str:
        return f"{self._prefix}key:{key_id}"

    def _charge(self, request_id: str) -> str:
        return f"{self._prefix}charge:{request_id}"

    def close(self) -> None:
        self.link.close()

    def create(self, name: str, *, admin: bool = False) -> tuple[KeyInfo, str]:
        key_id = secrets.token_hex(6)
        key = new_key(key_id)
        now = time.time()
        fields = ["name", name, "hash", hash_key(key).hex(), "created_at", repr(now)]
        fields += ["admin", str(int(admin)), "subscription_active", "1"]
        with self.link.reaching() as db:
            pipe = db.pipeline(transaction=True)
            pipe.hset(self._key(key_id), items=fields)
            pipe.zadd(self._prefix + "keys", {key_id: now})
            pipe.sadd(self._prefix + "active", key_id)
            pipe.execute()
        return KeyInfo(id=key_id, name=name, created_at=now, rotated_at=None, revoked_at=None, admin=admin), key

    def list(self) -> list[KeyInfo]:
        with self.link.reaching() as db:
            ids = cast("list[str]", db.zrange(self._prefix + "keys", 0, -1))
            pipe = db.pipeline(transaction=False)
            for key_id in ids:
                pipe.hmget(self._key(key_id), "name", "created_at", "rotated_at", "revoked_at", "admin")
            rows = pipe.execute()
        return [
            KeyInfo(
                id=key_id,
                name=row[0],
                created_at=float(row[1]),
                rotated_at=_float(row[2]),
                revoked_at=_float(row[3]),
                admin=row[4] == "1",
            )
            for key_id, row in zip(ids, rows, strict=True)
            if row[0] is not None
        ]

    def revoke(self, key_id: str) -> None:
        with self.link.reaching():
            done = self._revoke(keys=[self._key(key_id), self._prefix + "active"], args=[key_id, repr(time.time())])
        if not done:
            raise KeyNotFound(key_id)

    def _update(self, key_id: str, fields: dict[str, str]) -> None:
        args = [item for pair in fields.items() for item in pair]
        with self.link.reaching():
            done = self._update_active(keys=[self._key(key_id)], args=args)
        if not done:
            raise KeyNotFound(key_id)

    def rotate(self, key_id: str) -> str:
        """A new secret for the same key id; the old secret stops working at once."""
        key = new_key(key_id)
        self._update(key_id, {"hash": hash_key(key).hex(), "rotated_at": repr(time.time())})
        return key

    def has_active_keys(self) -> bool:
        with self.link.reaching() as db:
            return bool(db.scard(self._prefix + "active"))

    def verify(self, key: str) -> str | None:
        identity = self.identify(key)
        return identity[0] if identity is not None else None

    def identify(self, key: str) -> tuple[str, bool] | None:
        key_id = key_id_of(key)
        if key_id is None:
            return None
        with self.link.reaching() as db:
            stored, admin, revoked_at = _texts(db.hmget(self._key(key_id), "hash", "admin", "revoked_at"))
        if stored is None or revoked_at is not None or not hmac.compare_digest(bytes.fromhex(stored), hash_key(key)):
            return None
        return key_id, admin == "1"

    def account(self, key_id: str) -> KeyAccount | None:
        with self.link.reaching() as db:
            name, revoked_at, credits, active, hour, day = _texts(
                db.hmget(
                    self._key(key_id), "name", "revoked_at", "credits", "subscription_active", "hour_limit", "day_limit"
                )
            )
        if name is None or revoked_at is not None:
            return None
        return KeyAccount(
            credits=_float(credits), subscription_active=active != "0", hour_limit=_int(hour), day_limit=_int(day)
        )

    def set_credits(self, key_id: str, credits: float | None) -> None:
        self._update(key_id, {"credits": "" if credits is None else repr(float(credits))})

    def add_credits(self, key_id: str, amount: float) -> float:
        with self.link.reaching():
            balance = self._add_credits(keys=[self._key(key_id)], args=[repr(float(amount))])
        if balance is None:
            raise KeyNotFound(key_id)
        return float(balance)

    def set_limits(self, key_id: str, hour_limit: int | None, day_limit: int | None) -> None:
        self._update(
            key_id,
            {
                "hour_limit": "" if hour_limit is None else str(hour_limit),
                "day_limit": "" if day_limit is None else str(day_limit),
            },
        )

    def set_subscription(self, key_id: str, active: bool) -> None:
        self._update(key_id, {"subscription_active": str(int(active))})

    def reserve(self, request_id: str, key_id: str, amount: float) -> float | None:
        keys = [self._key(key_id), self._charge(request_id), self._open]
        args = [repr(float(amount)), repr(-float(amount)), request_id, key_id, repr(time.time()), self._replica]
        with self.link.reaching():
            outcome = self._reserve(keys=keys, args=args)
        if outcome[0] == "unmetered":
            return None
        if outcome[0] == "short":
            raise InsufficientCredits(float(outcome[1]))
        return float(outcome[1])

    def settle(self, request_id: str, *, refund: bool, keep: float | None = None) -> bool:
        keys = [self._charge(request_id)]
        args = [
            "1" if refund else "0",
            "" if keep is None else repr(float(keep)),
            repr(time.time()),
            request_id,
            self._prefix,
        ]
        with self.link.reaching():
            return bool(self._settle(keys=keys, args=args))

    def open_reservations(self) -> tuple[str, ...]:
        """This replica's reservations that are not settled yet."""
        with self.link.reaching() as db:
            return tuple(cast("set[str]", db.smembers(self._open)))
