"""`omniserve serve --model ...`: models named on the command line, one a Hugging Face id found in a
hub cache (offline), one a local folder; and the starts that must fail before anything runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from engines.demo import build_tiny_chat
from engines.model_build import build_atomically
from server.data_lock import LOCK_NAME
from tests.e2e.conftest import RunningServer, _cli, free_port, launched
from tests.hub_cache import add_to_hub_cache

pytestmark = pytest.mark.e2e

HUB_MODEL = "org/tiny-chat"
LOCAL_NAME = "mine"


def _offline_env(work: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    return {
        **env,
        "HF_HOME": str(work / "hf"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMNISERVE_DATA_DIR": str(work / "data"),
        "OMNISERVE_PORT": str(free_port()),
    }


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub cache under HF_HOME holding the tiny chat model as `org/tiny-chat`, and a second copy
    of it in a plain folder."""
    work = tmp_path_factory.mktemp("serve-by-model")
    build_atomically(work / "built", build_tiny_chat, "tiny-chat")
    add_to_hub_cache(work / "hf" / "hub", HUB_MODEL, work / "built")
    shutil.copytree(work / "built", work / "local-chat")
    return work


@pytest.fixture(scope="module")
def served(work: Path) -> Iterator[RunningServer]:
    env = _offline_env(work)
    created = _cli("keys", "create", "operator", "--admin", env=env)
    match = re.search(r"key: (\S+)", created)
    assert match, created
    log_path = work / "server.log"
    models = ["--model", HUB_MODEL, "--model", f"{LOCAL_NAME}={work / 'local-chat'}"]
    with launched(env, log_path, *models) as base_url:
        yield RunningServer(base_url=base_url, api_key=match.group(1), data_dir=work / "data", log_path=log_path)


def test_the_named_models_are_served_together(served: RunningServer) -> None:
    client = openai.OpenAI(base_url=served.openai_url, api_key=served.api_key, max_retries=0, timeout=300)
    assert sorted(model.id for model in client.models.list()) == sorted([HUB_MODEL, LOCAL_NAME])
    assert client.models.retrieve(HUB_MODEL).id == HUB_MODEL  # a name with a slash, in a URL path
    for name in (HUB_MODEL, LOCAL_NAME):
        result = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Hello, how are you today?"}], max_tokens=4
        )
        assert result.model == name
        assert result.usage is not None and 0 < result.usage.completion_tokens <= 4
    report = httpx.get(
        f"{served.base_url}/admin/scheduler", headers={"Authorization": f"Bearer {served.api_key}"}, timeout=10
    )
    report.raise_for_status()
    states = {name: model["state"] for name, model in report.json()["models"].items()}
    assert states == {HUB_MODEL: "resident", LOCAL_NAME: "resident"}


def _serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", "serve", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_an_unknown_id_offline_stops_the_start(work: Path, tmp_path: Path) -> None:
    env = {**_offline_env(work), "OMNISERVE_DATA_DIR": str(tmp_path / "data")}
    result = _serve(env, "--model", "org/not-cached")
    assert result.returncode == 2, result.stderr
    assert "org/not-cached: not a local path, and not in the Hugging Face cache at " + str(work / "hf" / "hub") in (
        result.stderr
    )
    assert not (tmp_path / "data" / LOCK_NAME).exists()


def test_an_unclassifiable_folder_stops_the_start(work: Path, tmp_path: Path) -> None:
    env = {**_offline_env(work), "OMNISERVE_DATA_DIR": str(tmp_path / "data")}
    folder = tmp_path / "mystery"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["BertForMaskedLM"], "model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(b"")
    result = _serve(env, "--model", f"what={folder}")
    assert result.returncode == 2, result.stderr
    assert f"--model what={folder}: {folder}: no kind omniserve serves fits config.json architectures: " in (
        result.stderr
    )
    assert "BertForMaskedLM" in result.stderr
    assert not (tmp_path / "data" / LOCK_NAME).exists()
