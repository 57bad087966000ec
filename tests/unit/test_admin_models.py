"""The admin API's model routes: listing, loading, unloading, pinning and unpinning catalog
models at runtime, their refusals, who may call them and how the document describes them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from engines.base import ModelKind, ModelSpec
from engines.residency import Residency
from tests.fakes import FAKE_SPECS, FakeTextEngine
from tests.unit.serving import serve

ADMIN = {"Authorization": "Bearer admin-key"}
CUSTOMER = {"Authorization": "Bearer customer-key"}
MB = 1024 * 1024
KEYS = {"static_keys": ["customer-key"], "static_admin_keys": ["admin-key"]}


def sized(name: str, megabytes: int, **fields: Any) -> ModelSpec:
    return ModelSpec(name=name, kind=ModelKind.CHAT, engine="fake", path="-", memory_bytes=megabytes * MB, **fields)


@asynccontextmanager
async def admin_client(tmp_path: Path, **options: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """A client with the admin key, and the components of the app it calls."""
    async with (
        serve(tmp_path, auth=KEYS, **options) as (url, state),
        httpx.AsyncClient(base_url=url, headers=ADMIN, timeout=30) as client,
    ):
        yield client, state


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    async with admin_client(tmp_path) as started:
        yield started


async def test_the_list_shows_every_catalog_model_as_it_stands(admin: tuple[httpx.AsyncClient, Any]) -> None:
    client, state = admin
    response = await client.get("/admin/models")
    assert response.status_code == 200, response.text
    models = {model["name"]: model for model in response.json()["models"]}
    assert set(models) == {spec.name for spec in FAKE_SPECS}
    assert models["fake-chat"] == {
        "name": "fake-chat",
        "aliases": ["fake-chat-alias"],
        "kind": "chat",
        "engine": "fake",
        "path": "-",
        "device": "cpu",
        "state": "resident",
        "pinned": False,
        # The scheduler's own figures (what the process grew by while it loaded, for a fake).
        "footprint_bytes": state.scheduler.report().models["fake-chat"].footprint_bytes,
        "footprint_source": state.scheduler.report().models["fake-chat"].footprint_source,
        "leases": 0,
        "queue_depth": 0,
    }
    one = await client.get("/admin/models/fake-chat-alias")
    assert one.status_code == 200 and one.json() == models["fake-chat"]


async def test_unload_then_load_changes_residency(admin: tuple[httpx.AsyncClient, Any]) -> None:
    client, state = admin
    unloaded = await client.delete("/admin/loaded/fake-rerank")
    assert unloaded.status_code == 200, unloaded.text
    assert unloaded.json()["state"] == "unloaded"
    assert state.scheduler.residency()["fake-rerank"] is Residency.UNLOADED
    assert state.scheduler.report().models["fake-rerank"].evictions == {"admin": 1}
    # Idempotent: unloading an unloaded model changes nothing.
    assert (await client.delete("/admin/loaded/fake-rerank")).json()["state"] == "unloaded"
    loaded = await client.put("/admin/loaded/fake-rerank")
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["state"] == "resident"
    assert state.scheduler.report().models["fake-rerank"].loads == 2
    assert (await client.put("/admin/loaded/fake-rerank")).json()["state"] == "resident"
    assert state.scheduler.report().models["fake-rerank"].loads == 2


async def test_unknown_models_are_404(admin: tuple[httpx.AsyncClient, Any]) -> None:
    client, _ = admin
    for method, path in [
        ("GET", "/admin/models/nope"),
        ("PUT", "/admin/loaded/nope"),
        ("DELETE", "/admin/loaded/nope"),
        ("PUT", "/admin/pinned/nope"),
        ("DELETE", "/admin/pinned/nope"),
    ]:
        response = await client.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["reason"] == "MODEL_NOT_FOUND"


async def test_a_model_in_use_is_not_unloaded(admin: tuple[httpx.AsyncClient, Any]) -> None:
    client, state = admin
    async with state.scheduler.lease("fake-chat"):
        refused = await client.delete("/admin/loaded/fake-chat")
        assert refused.status_code == 409, refused.text
        body = refused.json()
        assert body["reason"] == "MODEL_IN_USE" and body["code"] == 409
        assert "1 requests running or waiting" in body["message"]
        assert state.scheduler.residency()["fake-chat"] is Residency.RESIDENT
    assert (await client.delete("/admin/loaded/fake-chat")).json()["state"] == "unloaded"


async def test_pin_loads_and_unload_unpins(admin: tuple[httpx.AsyncClient, Any]) -> None:
    client, state = admin
    await client.delete("/admin/loaded/fake-embed")
    pinned = await client.put("/admin/pinned/fake-embed")
    assert pinned.status_code == 200, pinned.text
    assert pinned.json()["state"] == "resident" and pinned.json()["pinned"] is True
    # The idle sweep leaves a pinned model alone.
    state.scheduler.policy.idle_ttl_s = 0.001
    await asyncio.sleep(0.01)
    assert "fake-embed" not in await state.scheduler.unload_idle()
    unpinned = await client.delete("/admin/pinned/fake-embed")
    assert unpinned.json()["pinned"] is False and unpinned.json()["state"] == "resident"
    await client.put("/admin/pinned/fake-embed")
    unloaded = await client.delete("/admin/loaded/fake-embed")
    assert unloaded.json() | {"state": "unloaded", "pinned": False} == unloaded.json()


async def test_a_model_that_does_not_fit_beside_pinned_ones_is_409(tmp_path: Path) -> None:
    specs = [sized("a", 200), sized("b", 200)]
    async with admin_client(tmp_path, specs=specs, scheduler={"host_budget": str(300 * MB)}) as (client, state):
        assert state.scheduler.residency() == {"a": Residency.RESIDENT, "b": Residency.UNLOADED}
        assert (await client.put("/admin/pinned/a")).json()["pinned"] is True
        refused = await client.put("/admin/loaded/b")
        assert refused.status_code == 409, refused.text
        assert refused.json()["reason"] == "MODEL_DOES_NOT_FIT"
        # Pinning does not make room either, and leaves the model unpinned.
        refused_pin = await client.put("/admin/pinned/b")
        assert refused_pin.json()["reason"] == "MODEL_DOES_NOT_FIT"
        assert (await client.get("/admin/models/b")).json()["pinned"] is False
        await client.delete("/admin/pinned/a")
        # Unpinned, a is the least recently used idle model: it is evicted for b.
        assert (await client.put("/admin/loaded/b")).json()["state"] == "resident"
        assert state.scheduler.residency() == {"a": Residency.UNLOADED, "b": Residency.RESIDENT}
        assert state.scheduler.report().models["a"].evictions == {"lru": 1}


async def test_a_failed_load_is_500_and_is_tried_again(tmp_path: Path) -> None:
    broken = ModelSpec(name="broken", kind=ModelKind.CHAT, engine="fake", path="-", options={"fail_load": True})
    async with admin_client(tmp_path, specs=[broken]) as (client, state):
        assert state.scheduler.residency()["broken"] is Residency.FAILED
        engine = state.scheduler.engine("broken")
        failed = await client.put("/admin/loaded/broken")
        assert failed.status_code == 500, failed.text
        assert failed.json()["reason"] == "ENGINE_ERROR" and "/secret" not in failed.text
        engine.fail_load = False
        assert (await client.put("/admin/loaded/broken")).json()["state"] == "resident"
        engine.fail_load = True
        await client.delete("/admin/loaded/broken")
        await client.put("/admin/loaded/broken")
        # Unloading a failed model clears the failure.
        cleared = await client.delete("/admin/loaded/broken")
        assert cleared.status_code == 200 and cleared.json()["state"] == "unloaded"


class GatedEngine(FakeTextEngine):
    """Loads only once the test lets it."""

    gate: asyncio.Event

    async def load(self) -> None:
        await self.gate.wait()
        await super().load()


async def test_a_loading_model_is_not_unloaded_and_a_load_outlives_its_caller(tmp_path: Path) -> None:
    spec = ModelSpec(name="gated", kind=ModelKind.CHAT, engine="gated", path="-")
    gate = asyncio.Event()
    gate.set()
    GatedEngine.gate = gate
    async with admin_client(tmp_path, specs=[spec], factories={"gated": GatedEngine}) as (client, state):
        await client.delete("/admin/loaded/gated")
        gate.clear()
        with pytest.raises(httpx.ReadTimeout):  # the caller gives up while it loads
            await client.put("/admin/loaded/gated", timeout=0.3)
        assert state.scheduler.residency()["gated"] is Residency.LOADING
        refused = await client.delete("/admin/loaded/gated")
        assert refused.status_code == 409 and refused.json()["reason"] == "MODEL_IN_USE"
        assert "loading" in refused.json()["message"]
        gate.set()
        # The abandoned load was not cancelled: it finishes, and the next call finds it loaded.
        assert (await client.put("/admin/loaded/gated")).json()["state"] == "resident"
        assert state.scheduler.report().models["gated"].loads == 2


ROUTES = [
    ("GET", "/admin/cluster"),
    ("GET", "/admin/models"),
    ("GET", "/admin/models/fake-chat"),
    ("PUT", "/admin/loaded/fake-chat"),
    ("DELETE", "/admin/loaded/fake-chat"),
    ("PUT", "/admin/pinned/fake-chat"),
    ("DELETE", "/admin/pinned/fake-chat"),
    ("GET", "/admin/loras"),
    ("PUT", "/admin/loras/some-lora"),
    ("DELETE", "/admin/loras/some-lora"),
]


async def test_only_admin_keys_may_call(admin: tuple[httpx.AsyncClient, Any]) -> None:
    client, state = admin
    for method, path in ROUTES:
        customer = await client.request(method, path, headers=CUSTOMER)
        assert customer.status_code == 403, (path, customer.text)
        assert customer.json()["reason"] == "ACCESS_DENY"
        anonymous = await client.request(method, path, headers={"Authorization": ""})
        assert anonymous.status_code == 401, (path, anonymous.text)
        assert anonymous.json()["reason"] == "MISSING_API_KEY"
    # Nothing the refused calls asked for was done.
    assert state.scheduler.residency()["fake-chat"] is Residency.RESIDENT
    assert not state.scheduler.report().models["fake-chat"].pinned


async def test_the_document_describes_the_routes_and_their_conflicts(admin: tuple[httpx.AsyncClient, Any]) -> None:
    client, state = admin
    document = (await client.get("/schema/openapi.json")).json()
    operations = {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        if path.startswith("/admin/")
        for method, operation in item.items()
    }
    ids = {key: operation["operationId"] for key, operation in operations.items()}
    assert ids == {
        ("GET", "/admin/scheduler"): "schedulerReport",
        ("GET", "/admin/cluster"): "clusterView",
        ("GET", "/admin/models"): "listAdminModels",
        ("GET", "/admin/models/{name}"): "getAdminModel",
        ("PUT", "/admin/loaded/{name}"): "loadModel",
        ("DELETE", "/admin/loaded/{name}"): "unloadModel",
        ("PUT", "/admin/pinned/{name}"): "pinModel",
        ("DELETE", "/admin/pinned/{name}"): "unpinModel",
        ("GET", "/admin/loras"): "listAdapters",
        ("PUT", "/admin/loras/{name}"): "addAdapter",
        ("DELETE", "/admin/loras/{name}"): "removeAdapter",
    }
    conflicts = {key for key, operation in operations.items() if "409" in operation["responses"]}
    assert conflicts == {
        ("PUT", "/admin/loaded/{name}"),
        ("DELETE", "/admin/loaded/{name}"),
        ("PUT", "/admin/pinned/{name}"),
        ("PUT", "/admin/loras/{name}"),
    }
    async with state.scheduler.lease("fake-chat"):
        refused = await client.delete("/admin/loaded/fake-chat")
    schema = operations[("DELETE", "/admin/loaded/{name}")]["responses"]["409"]["content"]["application/json"]["schema"]
    validator = Draft202012Validator({**schema, "components": document["components"]})
    assert not list(validator.iter_errors(refused.json()))
    model = operations[("GET", "/admin/models/{name}")]["responses"]["200"]["content"]["application/json"]["schema"]
    validator = Draft202012Validator({**model, "components": document["components"]})
    assert not list(validator.iter_errors((await client.get("/admin/models/fake-chat")).json()))
