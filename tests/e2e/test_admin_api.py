"""The admin API against a running server on the demo catalog: a real vLLM model unloaded and
loaded again at runtime, and customer keys kept out."""

from __future__ import annotations

import os
import re

import httpx
import pytest

from tests.e2e.conftest import RunningServer, _cli

pytestmark = pytest.mark.e2e

MODEL = "demo-rerank"
RERANK = {"model": MODEL, "query": "sea", "documents": ["the sea", "a desk", "waves"], "top_n": 2}


@pytest.fixture(scope="module")
def admin_key(server: RunningServer) -> str:
    # The running server's own store: a key made from the CLI works at once.
    env = {
        **os.environ,
        "OMNISERVE_CONFIG": str(server.data_dir / "omniserve.toml"),
        "OMNISERVE_DATA_DIR": str(server.data_dir),
    }
    created = _cli("keys", "create", "e2e-operator", "--admin", env=env)
    match = re.search(r"key: (\S+)", created)
    assert match and "role: admin" in created, created
    return match.group(1)


def _state(client: httpx.Client, admin: dict[str, str]) -> str:
    response = client.get(f"/admin/models/{MODEL}", headers=admin)
    assert response.status_code == 200, response.text
    return str(response.json()["state"])


def test_an_operator_unloads_and_reloads_a_model(server: RunningServer, admin_key: str) -> None:
    admin = {"Authorization": f"Bearer {admin_key}"}
    customer = {"Authorization": f"Bearer {server.api_key}"}
    with httpx.Client(base_url=server.base_url, timeout=300) as client:
        listed = client.get("/admin/models", headers=admin)
        assert listed.status_code == 200, listed.text
        models = {model["name"]: model for model in listed.json()["models"]}
        assert {"demo-chat", "demo-embed", MODEL} <= set(models)
        assert models[MODEL]["kind"] == "rerank" and models[MODEL]["engine"] == "vllm"
        if models[MODEL]["state"] != "resident":
            assert client.put(f"/admin/loaded/{MODEL}", headers=admin).status_code == 200

        unloaded = client.delete(f"/admin/loaded/{MODEL}", headers=admin)
        assert unloaded.status_code == 200, unloaded.text
        assert unloaded.json()["state"] == "unloaded"
        report = client.get("/admin/scheduler", headers=admin).json()
        assert report["models"][MODEL]["state"] == "unloaded"
        assert report["models"][MODEL]["evictions"].get("admin", 0) >= 1

        loaded = client.put(f"/admin/loaded/{MODEL}", headers=admin)
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["state"] == "resident" and _state(client, admin) == "resident"
        # The reloaded engine serves.
        reranked = client.post("/v1/rerank", json=RERANK, headers=customer)
        assert reranked.status_code == 200, reranked.text
        assert len(reranked.json()["results"]) == 2


def test_customer_keys_may_not_administer(server: RunningServer, admin_key: str) -> None:
    customer = {"Authorization": f"Bearer {server.api_key}"}
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        for method, path in [
            ("GET", "/admin/models"),
            ("DELETE", f"/admin/loaded/{MODEL}"),
            ("PUT", f"/admin/pinned/{MODEL}"),
        ]:
            refused = client.request(method, path, headers=customer)
            assert refused.status_code == 403, (path, refused.text)
            assert refused.json()["reason"] == "ACCESS_DENY"
            assert client.request(method, path).status_code == 401
        admin = {"Authorization": f"Bearer {admin_key}"}
        model = client.get(f"/admin/models/{MODEL}", headers=admin).json()
        assert model["state"] == "resident" and model["pinned"] is False
