"""A reasoning chat model with a LoRA adapter, from a catalog file, through the OpenAI SDK: the
adapter listed with its parent and served by name, one added and removed at runtime by the
admin API, reasoning answered apart; and a misspelt reasoning parser stopping the start."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import RunningServer, _cli, free_port, launched
from tests.thinking_model import build_lora_adapter, build_thinking_model

pytestmark = pytest.mark.e2e

SHAPE = "<think>[a-z ]{1,20}</think>[a-z ]{1,20}"


def _catalog(work: Path, reasoning_parser: str) -> Path:
    config = work / f"omniserve-{reasoning_parser}.toml"
    # json.dumps writes TOML-compatible basic strings.
    config.write_text(
        "[[models]]\n"
        'name = "thinker"\nkind = "chat"\n'
        f"path = {json.dumps(str(work / 'base'))}\n"
        f"reasoning_parser = {json.dumps(reasoning_parser)}\n"
        f'loras = [{{ name = "thinker-lora", path = {json.dumps(str(work / "adapter"))} }}]\n'
        'options = { dtype = "float32", enforce_eager = true, kv_cache_memory_bytes = 33554432, '
        "max_model_len = 256, max_loras = 2 }\n"
    )
    return config


def _env(work: Path, config: Path, data: str) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMNISERVE_CONFIG": str(config),
        "OMNISERVE_DATA_DIR": str(work / data),
        "OMNISERVE_PORT": str(free_port()),
    }


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("text-adapters")
    build_thinking_model(work / "base")
    build_lora_adapter(work / "adapter", rank=8, seed=1)
    build_lora_adapter(work / "late-adapter", rank=8, seed=2)
    return work


@pytest.fixture(scope="module")
def served(work: Path) -> Iterator[RunningServer]:
    env = _env(work, _catalog(work, "deepseek_r1"), "data")
    match = re.search(r"key: (\S+)", _cli("keys", "create", "operator", "--admin", env=env))
    assert match
    with launched(env, work / "server.log") as base_url:
        yield RunningServer(
            base_url=base_url, api_key=match.group(1), data_dir=work / "data", log_path=work / "server.log"
        )


def _greedy(client: openai.OpenAI, model: str) -> str:
    result = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "the river"}],
        max_tokens=40,
        temperature=0,
        extra_body={"guided_regex": SHAPE},
    )
    assert result.model == model
    message = result.choices[0].message
    reasoning = message.model_extra["reasoning_content"] if message.model_extra else None
    assert reasoning and message.content and "think>" not in message.content
    return f"{reasoning}|{message.content}"


def test_adapters_are_listed_served_and_managed_at_runtime(served: RunningServer, work: Path) -> None:
    client = openai.OpenAI(base_url=served.openai_url, api_key=served.api_key, max_retries=0, timeout=300)
    cards = {model.id: model for model in client.models.list()}
    assert set(cards) == {"thinker", "thinker-lora"}
    assert cards["thinker-lora"].model_extra["parent"] == "thinker"  # type: ignore[index]
    assert cards["thinker-lora"].model_extra["root"] == "thinker-lora"  # type: ignore[index]

    base = _greedy(client, "thinker")
    adapted = _greedy(client, "thinker-lora")
    assert adapted != base and _greedy(client, "thinker-lora") == adapted

    admin = httpx.Client(base_url=served.base_url, headers={"Authorization": f"Bearer {served.api_key}"}, timeout=120)
    added = admin.put("/admin/loras/late", json={"model": "thinker", "path": str(work / "late-adapter")})
    assert added.status_code == 200, added.text
    assert "late" in {model.id for model in client.models.list()}
    assert _greedy(client, "late") not in (base, adapted)
    clash = admin.put("/admin/loras/thinker-lora", json={"model": "thinker", "path": str(work / "late-adapter")})
    assert clash.status_code == 409 and clash.json()["reason"] == "MODEL_IN_USE"
    assert admin.delete("/admin/loras/late").status_code == 200
    with pytest.raises(openai.NotFoundError):
        _greedy(client, "late")


def test_a_misspelt_reasoning_parser_stops_the_start(work: Path) -> None:
    env = _env(work, _catalog(work, "deepseek-r1"), "typo-data")
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "reasoning_parser 'deepseek-r1' is not one of vLLM's" in result.stderr
