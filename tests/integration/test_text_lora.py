"""LoRA adapters of a chat model on the real vLLM engine: a tiny random Llama and random
adapters built here, served by name from the catalog and added and removed at runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from engines.admission import AdmissionPolicy
from engines.base import TextAdapter
from engines.registry import ModelRegistry, vllm_factory
from engines.scheduler import Scheduler
from schemas.errors import ApiError
from schemas.openai.chat import ChatCompletionRequest
from schemas.openai.completions import CompletionRequest
from server.capabilities.text import TextCapability
from server.catalog import ModelCatalog
from server.settings import Limits
from tests.thinking_model import build_lora_adapter, build_thinking_model, thinking_spec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lora")
    build_thinking_model(root / "base")
    build_lora_adapter(root / "catalog-adapter", rank=8, seed=1)
    build_lora_adapter(root / "runtime-adapter", rank=4, seed=2)
    build_lora_adapter(root / "too-wide", rank=64, seed=3)
    return root


@pytest.fixture(scope="module")
async def services(models: Path) -> AsyncIterator[TextCapability]:
    spec = thinking_spec(
        models / "base",
        reasoning_parser=None,
        loras=[{"name": "thinker-lora", "path": str(models / "catalog-adapter")}],
        # Room for a runtime adapter beside the catalog's in one batch.
        options={**thinking_spec(models / "base").options, "max_loras": 2},
    )
    scheduler = Scheduler(ModelRegistry([spec], {"vllm": vllm_factory(cpu_threads=0)}), AdmissionPolicy())
    await scheduler.load_all()
    yield TextCapability(scheduler, Limits())
    await scheduler.unload_all()


def chat(model: str, **fields: Any) -> ChatCompletionRequest:
    body = {"model": model, "messages": [{"role": "user", "content": "the river"}], "max_tokens": 12}
    return msgspec.convert({**body, "temperature": 0, "ignore_eos": True, **fields}, ChatCompletionRequest)


async def chat_text(services: TextCapability, model: str) -> str:
    return (await services.chat.create(chat(model))).choices[0].message.content or ""


async def test_the_catalog_adapter_changes_greedy_output_deterministically(services: TextCapability) -> None:
    base = await chat_text(services, "thinker")
    adapted = await chat_text(services, "thinker-lora")
    assert adapted != base
    assert await chat_text(services, "thinker-lora") == adapted
    assert await chat_text(services, "thinker") == base
    completion = await services.completions.create(
        msgspec.convert(
            {"model": "thinker-lora", "prompt": "the river", "max_tokens": 8, "temperature": 0, "ignore_eos": True},
            CompletionRequest,
        )
    )
    assert completion.model == "thinker-lora" and completion.choices[0].text


async def test_the_model_list_names_the_adapter_and_its_parent(services: TextCapability, models: Path) -> None:
    cards = {card.id: card for card in ModelCatalog(services.chat.scheduler).cards()}
    assert cards["thinker-lora"].parent == "thinker"
    assert cards["thinker-lora"].root == "thinker-lora"  # its name: no server path reaches a client
    assert cards["thinker"].parent is None


async def test_an_adapter_added_at_runtime_serves_until_removed(services: TextCapability, models: Path) -> None:
    scheduler = services.chat.scheduler
    base = await chat_text(services, "thinker")
    catalog = await chat_text(services, "thinker-lora")
    await scheduler.add_adapter("thinker", TextAdapter(name="late", path=str(models / "runtime-adapter")))
    late = await chat_text(services, "late")
    assert late not in (base, catalog)
    assert scheduler.remove_adapter("late") == "thinker"
    with pytest.raises(ApiError) as caught:
        await services.chat.create(chat("late"))
    assert caught.value.status == 404
    assert await chat_text(services, "thinker-lora") == catalog


async def test_an_adapter_above_the_engines_rank_is_refused(services: TextCapability, models: Path) -> None:
    scheduler = services.chat.scheduler
    with pytest.raises(Exception, match="rank 64"):
        await scheduler.add_adapter("thinker", TextAdapter(name="wide", path=str(models / "too-wide")))
    assert scheduler.adapter_name("wide") is None
