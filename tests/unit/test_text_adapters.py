"""LoRA adapters of chat models, with fakes: served names and their cards, requests that name
one, the admin routes that add and remove them at runtime, and the engine options their
adapter_config.json decides."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engines.base import ModelKind, ModelSpec, SamplingOptions, TextAdapter
from engines.errors import InvalidJob
from engines.llm.adapters import AdapterError, AdapterTable
from engines.registry import CatalogError, ModelRegistry
from tests.fakes import FAKE_SPECS, FakeTextEngine, fake_factory
from tests.unit.serving import serve

ADMIN = {"Authorization": "Bearer admin-key"}
CUSTOMER = {"Authorization": "Bearer customer-key"}
KEYS = {"static_keys": ["customer-key"], "static_admin_keys": ["admin-key"]}


class FakeAdapterEngine(FakeTextEngine):
    """Serves adapters by name; remembers which adapter each generation asked for."""

    def __init__(self, spec: ModelSpec, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self._adapters = {adapter.name: adapter for adapter in spec.loras}
        self.generated_with: list[str | None] = []

    def adapters(self) -> list[TextAdapter]:
        return list(self._adapters.values())

    async def add_adapter(self, adapter: TextAdapter) -> None:
        if adapter.path == "/broken":
            raise InvalidJob("The adapter cannot be used: no adapter_config.json.", "path")
        self._adapters[adapter.name] = adapter

    def remove_adapter(self, name: str) -> None:
        del self._adapters[name]

    def generate(
        self, prompt_token_ids: list[int], options: SamplingOptions, request_id: str, *, media: Any = None
    ) -> Any:
        self.generated_with.append(options.adapter)
        return super().generate(prompt_token_ids, options, request_id, media=media)


SPECS = [
    ModelSpec(
        name="fake-chat",
        kind=ModelKind.CHAT,
        engine="fake",
        path="-",
        aliases=["fake-chat-alias"],
        loras=[TextAdapter(name="cat-lora", path="/adapters/cat")],
    ),
    ModelSpec(name="plain-chat", kind=ModelKind.CHAT, engine="fake", path="-"),
    *FAKE_SPECS[1:],
]


def factory(spec: ModelSpec) -> Any:
    return FakeAdapterEngine(spec) if spec.name == "fake-chat" else fake_factory(spec)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    async with (
        serve(tmp_path, specs=SPECS, factory=factory, auth=KEYS) as (url, state),
        httpx.AsyncClient(base_url=url, headers=ADMIN, timeout=30) as client,
    ):
        yield client, state


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def test_a_catalog_adapter_is_listed_with_its_parent_and_served_by_name(
    client: tuple[httpx.AsyncClient, Any],
) -> None:
    http, state = client
    cards = {card["id"]: card for card in (await http.get("/v1/models")).json()["data"]}
    assert (
        cards["cat-lora"]["parent"] == "fake-chat" and cards["cat-lora"]["root"] == "cat-lora"
    )  # its name, never its folder
    assert cards["fake-chat"]["parent"] is None
    answer = await http.post("/v1/chat/completions", json=chat("cat-lora"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "cat-lora"
    completion = await http.post("/v1/completions", json={"model": "cat-lora", "prompt": "hi", "max_tokens": 2})
    assert completion.status_code == 200, completion.text
    assert (await http.post("/v1/chat/completions", json=chat("fake-chat"))).status_code == 200
    engine = state.scheduler.engine("fake-chat")
    assert engine.generated_with == ["cat-lora", "cat-lora", None]


async def test_an_adapter_added_at_runtime_serves_until_deleted(client: tuple[httpx.AsyncClient, Any]) -> None:
    http, state = client
    body = {"model": "fake-chat-alias", "path": "/adapters/new"}
    added = await http.put("/admin/loras/org/new-lora", json=body)
    assert added.status_code == 200, added.text
    assert added.json() == {"name": "org/new-lora", "model": "fake-chat", "path": "/adapters/new"}
    assert (await http.put("/admin/loras/org/new-lora", json=body)).status_code == 200  # idempotent
    listed = (await http.get("/admin/loras")).json()["adapters"]
    assert {adapter["name"] for adapter in listed} == {"cat-lora", "org/new-lora"}
    cards = {card["id"]: card for card in (await http.get("/v1/models")).json()["data"]}
    assert cards["org/new-lora"]["parent"] == "fake-chat"
    assert (await http.post("/v1/chat/completions", json=chat("org/new-lora"))).status_code == 200
    assert state.scheduler.engine("fake-chat").generated_with == ["org/new-lora"]

    removed = await http.delete("/admin/loras/org/new-lora")
    assert removed.status_code == 200 and removed.json()["name"] == "org/new-lora"
    gone = await http.post("/v1/chat/completions", json=chat("org/new-lora"))
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "MODEL_NOT_FOUND"
    assert (await http.delete("/admin/loras/org/new-lora")).status_code == 404
    # A catalog adapter may be removed too (until the next start).
    assert (await http.delete("/admin/loras/cat-lora")).status_code == 200
    assert (await http.get("/admin/loras")).json()["adapters"] == []


@pytest.mark.parametrize("name", ["fake-embed", "fake-chat-alias", "cat-lora"])
async def test_a_name_already_served_is_a_conflict(client: tuple[httpx.AsyncClient, Any], name: str) -> None:
    http, _ = client
    response = await http.put(f"/admin/loras/{name}", json={"model": "fake-chat", "path": "/adapters/other"})
    assert response.status_code == 409, response.text
    assert response.json()["code"] == 409 and response.json()["reason"] == "MODEL_IN_USE"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"model": "nope", "path": "/a"}, 404),  # no such model
        ({"model": "fake-embed", "path": "/a"}, 400),  # not a chat model
        ({"model": "cat-lora", "path": "/a"}, 400),  # an adapter, not a model
        ({"model": "plain-chat", "path": "/a"}, 400),  # an engine without adapters
        ({"model": "fake-chat", "path": "/broken"}, 400),  # the engine refuses the adapter
        ({"model": "fake-chat"}, 400),  # no path
        ({"model": "fake-chat", "path": "/a", "scale": 2}, 400),  # unknown field
    ],
)
async def test_refusals_leave_the_name_free(
    client: tuple[httpx.AsyncClient, Any], body: dict[str, Any], status: int
) -> None:
    http, state = client
    response = await http.put("/admin/loras/try-me", json=body)
    assert response.status_code == status, response.text
    assert state.scheduler.adapter_name("try-me") is None
    assert (await http.put("/admin/loras/try-me", json={"model": "fake-chat", "path": "/a"})).status_code == 200


async def test_an_adapter_needs_a_name(client: tuple[httpx.AsyncClient, Any]) -> None:
    http, _ = client
    response = await http.put("/admin/loras/%20", json={"model": "fake-chat", "path": "/a"})
    assert response.status_code == 400 and response.json()["reason"] == "INVALID_REQUEST_BODY"


async def test_customers_cannot_manage_adapters(client: tuple[httpx.AsyncClient, Any]) -> None:
    http, _ = client
    response = await http.put("/admin/loras/x", json={"model": "fake-chat", "path": "/a"}, headers=CUSTOMER)
    assert response.status_code == 403
    assert (await http.delete("/admin/loras/cat-lora", headers=CUSTOMER)).status_code == 403


def test_catalog_adapter_names_are_unique_across_models_and_aliases() -> None:
    clash = ModelSpec(
        name="other",
        kind=ModelKind.CHAT,
        engine="fake",
        path="-",
        loras=[TextAdapter(name="fake-chat-alias", path="/a")],
    )
    with pytest.raises(CatalogError, match="fake-chat-alias"):
        ModelRegistry([SPECS[0], clash], {"fake": factory})


def adapter(folder: Path, rank: int) -> str:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "target_modules": ["q_proj"]}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    return str(folder)


def lora_spec(loras: list[TextAdapter], **options: Any) -> ModelSpec:
    return ModelSpec(name="m", kind=ModelKind.CHAT, path="-", loras=loras, options=options)


def test_engine_options_follow_the_largest_adapter_rank(tmp_path: Path) -> None:
    loras = [
        TextAdapter(name="a", path=adapter(tmp_path / "a", 8)),
        TextAdapter(name="b", path=adapter(tmp_path / "b", 20)),
    ]
    # vLLM takes only some ranks: 20 needs 32.
    assert AdapterTable(lora_spec(loras)).engine_options() == {"enable_lora": True, "max_loras": 2, "max_lora_rank": 32}
    assert AdapterTable(lora_spec([])).engine_options() == {}
    runtime_only = AdapterTable(lora_spec([], enable_lora=True, max_lora_rank=64))
    assert runtime_only.engine_options() == {"enable_lora": True, "max_loras": 1, "max_lora_rank": 64}


def test_runtime_adapters_need_lora_support_and_a_rank_that_fits(tmp_path: Path) -> None:
    with pytest.raises(InvalidJob, match="without LoRA support"):
        AdapterTable(lora_spec([])).add(TextAdapter(name="x", path="-"), 8)
    table = AdapterTable(lora_spec([], enable_lora=True))
    with pytest.raises(InvalidJob, match="rank 32"):
        table.add(TextAdapter(name="x", path="-"), 32)
    assert table.add(TextAdapter(name="x", path="/x"), 16).lora_int_id == 1


@pytest.mark.parametrize("content", [None, "not json", json.dumps({"alpha": 8})])
def test_an_adapter_without_a_readable_rank_fails_the_catalog(tmp_path: Path, content: str | None) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    if content is not None:
        (folder / "adapter_config.json").write_text(content)
    with pytest.raises(AdapterError):
        AdapterTable(lora_spec([TextAdapter(name="bad", path=str(folder))]))


def test_loras_on_a_model_that_does_not_chat_are_refused() -> None:
    from engines.registry import check_vllm_spec

    spec = ModelSpec(name="e", kind=ModelKind.EMBEDDING, path="-", loras=[TextAdapter(name="x", path="-")])
    with pytest.raises(CatalogError, match="chat models only"):
        check_vllm_spec(spec)
