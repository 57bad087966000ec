"""The cluster catalog: which live replica runs which catalog model.

Every replica knows the whole catalog (the same settings ``models``), so any replica validates
and accepts any request; settings' ``cluster.serve`` says which models one RUNS. Each replica
publishes an entry (its id, the URL others reach it at, the canonical names of the models it
runs, its start time, its last heartbeat), and looks up who runs a model from a view of every
live entry.

- `LocalCluster`: one server (the SQLite store): the view is this server alone, which runs
  every catalog model unless ``cluster.serve`` names a subset.
- `RedisCluster`: replicas sharing a Redis (``store_url``). Each entry is a key
  ``omniserve:replica:<id>`` written every ``heartbeat_s`` with a TTL of ``lease_s``, so the
  entry of a replica that died expires by itself (Redis's clock, not the replicas', decides);
  a clean stop deletes it. ``omniserve:replicas`` indexes the ids (an expired id is dropped
  from it on the next read). The view is read in the same background beat and kept in the
  process: a lookup never waits on Redis. While Redis cannot be read, the last view stands
  for ``lease_s`` and then only this replica is known live.

A request for a model that runs only elsewhere is refused with `ModelServedElsewhere`, whose
final message (where it runs, or that nowhere does) `cluster_refusal` writes from the view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from engines.registry import CatalogError, ModelRegistry
from schemas.errors import ApiError, ErrorCode
from server.keystore import replica_id
from server.keystore_redis import PREFIX
from server.settings import Settings

log = logging.getLogger("omniserve.cluster")

# Where create_app keeps the catalog in the app's state, for the error handler.
CLUSTER_STATE = "omniserve_cluster"
# The scope entry through which the error handler asks the peer proxy to forward a request.
PEER_REQUEST_SCOPE = "omniserve.peer_request"


class Replica(msgspec.Struct, frozen=True, kw_only=True):
    """One replica's entry: what it publishes, as every other replica reads it."""

    id: str
    url: str
    models: tuple[str, ...]  # canonical catalog names
    started_at: float  # Unix time
    heartbeat_at: float  # Unix time of the writer's clock


@runtime_checkable
class ClusterCatalog(Protocol):
    @property
    def here(self) -> Replica:
        """This replica's own entry."""
        ...

    @property
    def retry_after_s(self) -> float | None:
        """How long a client should wait before asking again for a model that no live replica
        runs; None where no other replica can ever start (one server)."""
        ...

    def served_here(self, model: str) -> bool: ...

    def serving(self, model: str) -> list[Replica]:
        """The live replicas that run the catalog model `model` (canonical name), this one
        first. From the cached view: no I/O."""
        ...

    def replicas(self) -> list[Replica]:
        """Every live replica, this one first."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def served_models(registry: ModelRegistry, serve: list[str]) -> frozenset[str] | None:
    """The canonical names of the models ``cluster.serve`` names (names or aliases); None
    for all of them. A name the catalog does not know stops startup."""
    if not serve:
        return None
    names = set()
    for name in serve:
        engine = registry.get(name)
        if engine is None:
            raise CatalogError(f"cluster.serve names {name!r}, which is not a model of the catalog")
        names.add(engine.spec.name)
    return frozenset(names)


class LocalCluster:
    """One server: the view is itself."""

    retry_after_s: float | None = None

    def __init__(self, here: Replica) -> None:
        self._here = here
        self._models = frozenset(here.models)

    @property
    def here(self) -> Replica:
        return self._here

    def served_here(self, model: str) -> bool:
        return model in self._models

    def serving(self, model: str) -> list[Replica]:
        return [self._here] if model in self._models else []

    def replicas(self) -> list[Replica]:
        return [self._here]

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class RedisCluster:
    """Replicas sharing a Redis: publish this one's entry, read everyone's, in one beat."""

    def __init__(
        self,
        url: str,
        here: Replica,
        *,
        heartbeat_s: float,
        lease_s: float,
        timeout_s: float,
        prefix: str = PREFIX,
    ) -> None:
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # As the key store: one retry at once on a fresh connection, never a long backoff.
            retry=Retry(NoBackoff(), 1),
            decode_responses=True,
        )
        self._here = here
        self._models = frozenset(here.models)
        self._heartbeat_s = heartbeat_s
        self._lease_s = lease_s
        # A beat is two round trips, each bounded by the client's timeouts (and one retry).
        self._beat_timeout_s = 4 * timeout_s
        self._index = f"{prefix}replicas"
        self._entry_prefix = f"{prefix}replica:"
        self._others: list[Replica] = []
        self._read_at = float("-inf")  # monotonic time of the last view read
        self._reachable = True
        self._beating: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def here(self) -> Replica:
        return self._here

    @property
    def retry_after_s(self) -> float | None:
        # A replica that starts is in the view within a heartbeat; one that died leaves it
        # within a lease: the view has changed by then, if it is going to.
        return self._lease_s

    def served_here(self, model: str) -> bool:
        return model in self._models

    def _live_others(self) -> list[Replica]:
        if time.monotonic() - self._read_at > self._lease_s:
            return []  # not read for a whole lease: nothing is known of the others
        return self._others

    def serving(self, model: str) -> list[Replica]:
        return [replica for replica in self.replicas() if model in replica.models]

    def replicas(self) -> list[Replica]:
        return [self._here, *self._live_others()]

    async def start(self) -> None:
        # The first beat before serving, so the view is there for the first request; a Redis
        # that is down does not keep the server from starting (the beat tries again).
        await self._beat()
        self._beating = asyncio.create_task(self._beat_forever())

    async def stop(self) -> None:
        self._stopping = True
        if self._beating is not None:
            # The flag too: a cancel landing inside a Redis call may reach the beat as a
            # connection error, which the beat survives; the flag ends its loop then.
            self._beating.cancel()
            await asyncio.wait([self._beating], timeout=self._beat_timeout_s + self._heartbeat_s)
            self._beating = None
        try:
            async with asyncio.timeout(self._beat_timeout_s):
                pipe = self._redis.pipeline(transaction=True)
                pipe.delete(self._entry_prefix + self._here.id)
                pipe.srem(self._index, self._here.id)
                await pipe.execute()
        except (RedisError, TimeoutError):
            log.warning("cluster entry of replica %s not removed: its lease ends it", self._here.id)
        finally:
            await self._redis.aclose()

    async def _beat_forever(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._heartbeat_s)
            await self._beat()

    async def _beat(self) -> None:
        try:
            async with asyncio.timeout(self._beat_timeout_s):
                await self._publish_and_read()
        except (RedisError, TimeoutError) as exc:
            if self._reachable:
                log.warning("cluster catalog: Redis unreachable (%s); the view is kept for one lease", exc)
            self._reachable = False
            return
        if not self._reachable:
            log.info("cluster catalog: Redis reachable again")
        self._reachable = True

    async def _publish_and_read(self) -> None:
        self._here = msgspec.structs.replace(self._here, heartbeat_at=time.time())
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(self._entry_prefix + self._here.id, msgspec.json.encode(self._here), px=int(self._lease_s * 1000))
        pipe.sadd(self._index, self._here.id)
        pipe.smembers(self._index)
        *_, members = await pipe.execute()
        ids = sorted(str(member) for member in members if member != self._here.id)
        entries = await self._redis.mget([self._entry_prefix + id_ for id_ in ids]) if ids else []
        others, gone = [], []
        for id_, entry in zip(ids, entries, strict=True):
            if entry is None:
                gone.append(id_)
                continue
            try:
                others.append(msgspec.json.decode(entry, type=Replica))
            except msgspec.DecodeError:
                log.warning("cluster entry of replica %s unreadable; ignored", id_)
        if gone:
            # Their leases ended: dropped from the index, unless they came back meanwhile.
            with contextlib.suppress(RedisError):
                await self._redis.srem(self._index, *gone)
        self._others = others
        self._read_at = time.monotonic()


def open_cluster(settings: Settings, served: list[str]) -> ClusterCatalog:
    """The catalog for this server: Redis with a shared store, else this server alone.
    ``served``: the canonical names of the models this server runs."""
    cluster = settings.cluster
    now = time.time()
    here = Replica(
        id=replica_id(settings.data_path),
        url=(cluster.advertise_url or settings.public_base_url).rstrip("/"),
        models=tuple(served),
        started_at=now,
        heartbeat_at=now,
    )
    if not settings.store_url:
        return LocalCluster(here)
    return RedisCluster(
        settings.store_url,
        here,
        heartbeat_s=cluster.heartbeat_s,
        lease_s=cluster.lease_s,
        timeout_s=settings.store_timeout_s,
    )


class ModelServedElsewhere(ApiError):
    """A request for a catalog model this server does not run. The error handler replaces it
    with `cluster_refusal`, which says where the model runs."""

    def __init__(self, model: str, param: str | None = "model") -> None:
        super().__init__(ErrorCode.MODEL_NOT_FOUND, f"The model '{model}' is not served by this server.", param=param)
        self.model = model


def cluster_refusal(cluster: ClusterCatalog, model: str, param: str | None = "model") -> ApiError:
    """Where the model runs, for a client that asked a server that does not run it.

    Served by another live replica: 404 MODEL_NOT_FOUND (not here, as for a model this server
    does not know), naming the URLs that serve it, so the client can go there. Served by no
    live replica of a cluster: 503 SERVICE_NOT_AVAILABLE with Retry-After, not 404: the model
    is in the catalog, and runs again once a replica serving it (re)starts, so a client should
    retry rather than conclude the name is wrong. On one server (no other replica can start)
    a model it does not run is simply not found.
    """
    urls = [replica.url for replica in cluster.serving(model) if replica.id != cluster.here.id]
    if urls:
        where = ", ".join(urls)
        return ApiError(
            ErrorCode.MODEL_NOT_FOUND,
            f"The model '{model}' is not served by this server; it is served at {where}.",
            param=param,
        )
    if cluster.retry_after_s is None:
        return ApiError(ErrorCode.MODEL_NOT_FOUND, f"The model '{model}' is not served by this server.", param=param)
    return ApiError(
        ErrorCode.SERVICE_NOT_AVAILABLE,
        f"No live server runs the model '{model}' now; try again later.",
        param=param,
        retry_after=cluster.retry_after_s,
    )


class PeerRequest:
    """Put in a request's scope by the peer proxy; the error handler names the model there
    when the request is for a model that runs only elsewhere."""

    __slots__ = ("model",)

    def __init__(self) -> None:
        self.model: str | None = None


def ask_peer(scope: Mapping[str, Any], model: str) -> None:
    """Ask the peer proxy, if it watches this request, to forward it to a replica running `model`."""
    request = scope.get(PEER_REQUEST_SCOPE)
    if isinstance(request, PeerRequest):
        request.model = model
