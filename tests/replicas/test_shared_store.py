"""What two replicas share through one Redis and one outputs folder, with the official clients:
a key made or revoked anywhere counts everywhere at the next request, a balance spent from both
replicas at once is never overdrawn, a replica killed mid-request gives its reservation back
when it starts again, an output URL one replica made is served by the other, and a Redis that
stops answers 503 with Retry-After (never a hang) until it is back."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from novita_client import NovitaClient
from novita_client.exceptions import NovitaResponseError

from tests.replicas.cluster import MODEL, PRICE_PER_IMAGE, Cluster, Replica

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

# One image per request, as small and quick as demo-sd makes them.
IMAGE: dict[str, Any] = {"model": MODEL, "prompt": "a lighthouse", "size": "128x128", "response_format": "b64_json"}
QUICK = {"steps": 1, "seed": 3}
# A request that runs long enough to be cut off: seconds on demo-sd, where a quick one takes 50 ms.
SLOW = {"steps": 50, "seed": 3}
# Every client call is bounded: a replica that hung would fail the test here instead.
CLIENT_TIMEOUT_S = 30.0
RECOVERY_DEADLINE_S = 20.0
IN_FLIGHT_DEADLINE_S = 30.0


def _openai(replica: Replica, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=replica.openai_url, api_key=key, max_retries=0, timeout=CLIENT_TIMEOUT_S)


def _image(replica: Replica, key: str, extra: dict[str, Any] = QUICK) -> int:
    """Images made by one metered request on ``replica``."""
    with _openai(replica, key) as client:
        return len(client.images.generate(**IMAGE, extra_body=extra).data or [])


def _until(check: Callable[[], bool], deadline_s: float, what: str, cluster: Cluster) -> None:
    deadline = time.monotonic() + deadline_s
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {deadline_s:g} s\n{cluster.log_tails()}"
        time.sleep(0.1)


def test_a_key_made_through_one_replica_authenticates_on_the_other(cluster: Cluster) -> None:
    _, key = cluster.create_key("made-on-a", via=cluster.a)
    with _openai(cluster.b, key) as client:
        assert MODEL in {model.id for model in client.models.list()}
    listed = NovitaClient(key, base_url=cluster.b.base_url).models_v3(refresh=True)
    assert MODEL in {model.sd_name_in_api for model in listed}


def test_a_key_revoked_through_one_replica_is_refused_by_the_other_at_its_next_request(cluster: Cluster) -> None:
    key_id, key = cluster.create_key("revoked-on-b", via=cluster.a)
    with _openai(cluster.a, key) as on_a:
        assert MODEL in {model.id for model in on_a.models.list()}  # A has checked (and may remember) it
        cluster.revoke(key_id, via=cluster.b)
        with pytest.raises(openai.PermissionDeniedError) as refused:
            on_a.models.list()
    assert refused.value.code == "INVALID_API_KEY"
    with pytest.raises(NovitaResponseError, match="403"):
        NovitaClient(key, base_url=cluster.a.base_url).models_v3(refresh=True)


async def test_concurrent_requests_on_both_replicas_spend_a_balance_exactly(cluster: Cluster) -> None:
    paid_for = 10
    key_id, key = cluster.create_key("ten-images", credits=paid_for * PRICE_PER_IMAGE)
    clients = [
        openai.AsyncOpenAI(base_url=replica.openai_url, api_key=key, max_retries=0, timeout=CLIENT_TIMEOUT_S)
        for replica in cluster.replicas
    ]

    async def one(client: openai.AsyncOpenAI) -> str:
        try:
            result = await client.images.generate(**IMAGE, extra_body=QUICK)
        except openai.BadRequestError as exc:
            return str(exc.code)
        return f"{len(result.data or [])} image"

    try:
        outcomes = await asyncio.gather(*(one(clients[i % len(clients)]) for i in range(2 * paid_for)))
    finally:
        for client in clients:
            await client.close()
    assert Counter(outcomes) == {"1 image": paid_for, "BILLING_BALANCE_NOT_ENOUGH": paid_for}, cluster.log_tails()
    assert cluster.balance(key_id) == 0
    assert cluster.charges(key_id) == {"committed": paid_for}
    assert all(cluster.open_reservations(replica) == set() for replica in cluster.replicas)


def test_a_replica_killed_mid_request_refunds_its_reservation_when_it_starts_again(cluster: Cluster) -> None:
    key_id, key = cluster.create_key("cut-off", credits=5 * PRICE_PER_IMAGE)
    replica_id = cluster.a.replica_id
    outcome: list[BaseException | int] = []

    def slow_request() -> None:
        try:
            outcome.append(_image(cluster.a, key, SLOW))
        except Exception as exc:
            outcome.append(exc)

    request = threading.Thread(target=slow_request, daemon=True)
    request.start()
    _until(lambda: bool(cluster.open_reservations(cluster.a)), IN_FLIGHT_DEADLINE_S, "A reserved the credits", cluster)
    cluster.a.kill()
    request.join(timeout=CLIENT_TIMEOUT_S)
    assert len(outcome) == 1 and isinstance(outcome[0], openai.APIConnectionError), outcome
    # The cut-off request's credits stay reserved while A is down; B serves the key meanwhile.
    assert cluster.charges(key_id) == {"reserved": 1}
    assert _image(cluster.b, key) == 1
    assert cluster.balance(key_id) == 3 * PRICE_PER_IMAGE

    cluster.a.start()
    cluster.a.wait_ready()
    assert cluster.a.replica_id == replica_id  # the same replica, so its open reservations are its own
    assert cluster.charges(key_id) == {"committed": 1, "refunded": 1}
    assert cluster.balance(key_id) == 4 * PRICE_PER_IMAGE
    assert cluster.open_reservations(cluster.a) == set()
    assert _image(cluster.a, key) == 1


def test_an_output_url_made_by_one_replica_is_served_by_the_other(cluster: Cluster) -> None:
    _, key = cluster.create_key("outputs")
    with _openai(cluster.a, key) as client:
        [item] = client.images.generate(**{**IMAGE, "response_format": "url"}, extra_body=QUICK).data or []
    assert item.url is not None and item.url.startswith(cluster.a.base_url), item.url
    made = httpx.get(item.url, timeout=CLIENT_TIMEOUT_S)
    assert made.status_code == 200 and made.headers["content-type"] == "image/png"
    # The same signed path on B: the file is in the shared folder, the signature made with the
    # key both replicas read from Redis.
    on_b = item.url.replace(cluster.a.base_url, cluster.b.base_url, 1)
    elsewhere = httpx.get(on_b, timeout=CLIENT_TIMEOUT_S)
    assert elsewhere.status_code == 200, elsewhere.text
    assert elsewhere.content == made.content
    # A signature that is not the shared key's is refused there as on A.
    tampered = httpx.get(on_b[:-1] + ("1" if on_b.endswith("0") else "0"), timeout=CLIENT_TIMEOUT_S)
    assert tampered.status_code == 403 and tampered.json()["reason"] == "ACCESS_DENY", tampered.text


def test_a_stopped_redis_answers_503_with_retry_after_then_service_resumes(cluster: Cluster) -> None:
    key_id, key = cluster.create_key("through-an-outage", credits=5 * PRICE_PER_IMAGE)
    assert [_image(replica, key) for replica in cluster.replicas] == [1, 1]
    cluster.redis.stop()
    try:
        for replica in cluster.replicas:
            with _openai(replica, key) as client, pytest.raises(openai.InternalServerError) as down:
                client.images.generate(**IMAGE, extra_body=QUICK)
            assert down.value.status_code == 503 and down.value.code == "SERVICE_NOT_AVAILABLE"
            assert float(down.value.response.headers["Retry-After"]) > 0
            v3 = httpx.get(
                f"{replica.base_url}/v3/model", headers={"Authorization": f"Bearer {key}"}, timeout=CLIENT_TIMEOUT_S
            )
            assert v3.status_code == 503 and v3.json()["reason"] == "SERVICE_NOT_AVAILABLE", v3.text
            assert float(v3.headers["Retry-After"]) > 0
            # Probes do not need the store: the process itself is alive.
            assert httpx.get(f"{replica.base_url}/health", timeout=CLIENT_TIMEOUT_S).status_code == 200
    finally:
        cluster.redis.start()

    def served(replica: Replica) -> bool:
        try:
            return _image(replica, key) == 1
        except openai.InternalServerError as exc:
            assert exc.status_code == 503, exc
            return False

    for replica in cluster.replicas:
        _until(functools.partial(served, replica), RECOVERY_DEADLINE_S, f"{replica.name} serves again", cluster)
    # Redis kept the key and its balance through the stop: two images before, two after.
    assert cluster.balance(key_id) == 1 * PRICE_PER_IMAGE
    assert cluster.charges(key_id) == {"committed": 4}
    admin = httpx.get(
        f"{cluster.b.base_url}/admin/models/{MODEL}",
        headers={"Authorization": f"Bearer {cluster.admin_key}"},
        timeout=CLIENT_TIMEOUT_S,
    )
    assert admin.status_code == 200 and admin.json()["name"] == MODEL, admin.text
