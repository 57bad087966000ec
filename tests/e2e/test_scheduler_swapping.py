"""The scheduler on real engines: a catalog larger than its memory budget serves a mixed,
concurrent stream of chat, embeddings, images (interactive and /v3 tasks), speech and
transcription with no failed request, swapping models in and out and never over budget.

A second omniserve process, with its own catalog: the demo models with declared footprints
(the scheduler plans with these; the tiny demo models use far less) and a host budget with
room for the two pinned vLLM models and any two of the four others. Every round asks for all
four, so each round must evict and reload."""

from __future__ import annotations

import base64
import io
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import openai
import pytest
from novita_client import NovitaClient
from PIL import Image

from engines.audio.demo import audio_demo_catalog
from engines.demo import demo_catalog
from engines.image.demo import image_demo_catalog
from tests.audio_inputs import SENTENCE, espeak, read_wav, word_error_rate
from tests.e2e.conftest import free_port, launched, scraped

pytestmark = pytest.mark.e2e

MB = 1 << 20
FOOTPRINTS_MB = {
    "demo-chat-tiny": 400,
    "demo-embed": 300,
    "demo-sd": 200,
    "demo-sdxl": 200,
    "demo-tts": 200,
    "demo-whisper": 200,
}
PINNED = {"demo-chat-tiny", "demo-embed"}
BUDGET_MB = 400 + 300 + 2 * 200
SWAPPING = set(FOOTPRINTS_MB) - PINNED
ROUNDS = 2


class TightServer(msgspec.Struct):
    base_url: str

    @property
    def openai_url(self) -> str:
        return f"{self.base_url}/openai/v1"

    def scheduler(self) -> dict[str, Any]:
        response = httpx.get(f"{self.base_url}/admin/scheduler", timeout=10)
        response.raise_for_status()
        return dict(response.json())


def _catalog(demo_root: Path) -> list[dict[str, Any]]:
    specs = [*demo_catalog(demo_root), *image_demo_catalog(demo_root), *audio_demo_catalog(demo_root)]
    entries = []
    for spec in specs:
        if spec.name in FOOTPRINTS_MB:
            footprint = FOOTPRINTS_MB[spec.name] * MB
            sized = msgspec.structs.replace(spec, memory_bytes=footprint, pinned=spec.name in PINNED)
            entries.append({key: value for key, value in msgspec.to_builtins(sized).items() if value is not None})
    assert {entry["name"] for entry in entries} == set(FOOTPRINTS_MB)
    return entries


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory: pytest.TempPathFactory, demo_root: Path) -> Iterator[TightServer]:
    work = tmp_path_factory.mktemp("tight-budget")
    port = free_port()
    config = {
        "host": "127.0.0.1",
        "port": port,
        "data_dir": str(work / "data"),
        # Two cores run every engine here: a request may wait for several loads and jobs before
        # its turn, longer than the default 30 s that suits a real deployment.
        "limits": {"queue_timeout_s": 300.0},
        "scheduler": {"host_budget": str(BUDGET_MB * MB)},
        "models": _catalog(demo_root),
    }
    config_path = work / "omniserve.toml"
    config_path.write_bytes(msgspec.toml.encode(config))
    env = {**os.environ, "OMNISERVE_PORT": str(port)}
    with launched(env, work / "server.log", "--config", str(config_path)) as base_url:
        yield TightServer(base_url=base_url)


class BudgetWatch:
    """Samples /admin/scheduler until stopped: host memory in use and the resident models."""

    def __init__(self, server: TightServer) -> None:
        self.server = server
        self.samples: list[tuple[int, int, frozenset[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            report = self.server.scheduler()
            [host] = report["devices"]
            resident = frozenset(name for name, model in report["models"].items() if model["state"] == "resident")
            self.samples.append((host["used_bytes"], host["budget_bytes"], resident))
            self._stop.wait(0.1)

    def __enter__(self) -> BudgetWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _stream(server: TightServer, round_index: int) -> list[Callable[[], None]]:
    """One round: every kind of request, each checking its own answer."""
    client = openai.OpenAI(base_url=server.openai_url, api_key="unused", max_retries=0, timeout=300)
    novita = NovitaClient("unused", base_url=server.base_url)
    speech = espeak(SENTENCE)

    def chat() -> None:
        result = client.chat.completions.create(
            model="demo-chat-tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=8
        )
        assert result.choices[0].finish_reason in ("stop", "length")

    def embeddings() -> None:
        result = client.embeddings.create(model="demo-embed", input=["a cat", "a dog"], encoding_format="float")
        assert [len(item.embedding) for item in result.data] == [384, 384]

    def image() -> None:
        result = client.images.generate(
            model="demo-sd", prompt="a boat", size="128x128", response_format="b64_json", extra_body={"steps": 2}
        )
        assert result.data and result.data[0].b64_json
        assert Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).size == (128, 128)

    def image_task() -> None:
        result = novita.txt2img_v3(
            model_name="demo-sdxl", prompt="a lighthouse", image_num=1, width=128, height=128, steps=2, seed=round_index
        )
        assert result.task.status.value == "TASK_STATUS_SUCCEED", result.task
        assert Image.open(io.BytesIO(base64.b64decode(result.images_encoded[0]))).size == (128, 128)

    def say() -> None:
        audio = client.audio.speech.create(model="demo-tts", voice="alloy", input="Hello there.", response_format="wav")
        samples, _ = read_wav(audio.content)
        assert samples.size > 0 and np.abs(samples).max() > 0

    def transcribe() -> None:
        result = client.audio.transcriptions.create(model="demo-whisper", file=("speech.wav", speech))
        assert word_error_rate(SENTENCE, result.text) < 0.2, result.text

    return [chat, chat, embeddings, embeddings, image, image, image_task, say, say, transcribe, transcribe]


def test_a_mixed_stream_over_a_tight_budget_swaps_models_and_never_fails(tight_server: TightServer) -> None:
    before = tight_server.scheduler()["models"]
    assert {name for name in PINNED if before[name]["state"] == "resident"} == PINNED
    with BudgetWatch(tight_server) as watch, ThreadPoolExecutor(max_workers=11) as pool:
        for round_index in range(ROUNDS):
            calls = _stream(tight_server, round_index)
            # Every request of a round in flight at once; each raises on a failed answer.
            for future in [pool.submit(call) for call in calls]:
                future.result(timeout=600)
    after = tight_server.scheduler()["models"]

    # Never over budget, and the resident set changed as the stream went on.
    assert watch.samples
    assert all(used <= budget for used, budget, _ in watch.samples)
    assert all(used <= BUDGET_MB * MB for used, _, _ in watch.samples)
    assert len({resident for _, _, resident in watch.samples}) >= 3
    # Models were evicted for room (least recently used) and loaded again later.
    evicted = {name: after[name]["evictions"].get("lru", 0) for name in SWAPPING}
    assert sum(evicted.values()) >= 2 * ROUNDS, evicted
    assert max(after[name]["loads"] for name in SWAPPING) >= 2, after
    # The pinned models stayed: loaded once at startup, never evicted.
    for name in PINNED:
        assert after[name]["state"] == "resident" and after[name]["loads"] == 1, after[name]
        assert after[name]["evictions"] == {}
    evictions = {
        labels: value
        for (name, labels), value in scraped(tight_server.base_url).items()
        if name == "omniserve_model_evictions_total"
    }
    assert any(("reason", "lru") in labels and value > 0 for labels, value in evictions.items()), evictions


def test_the_swapped_models_answer_again_after_the_stream(tight_server: TightServer) -> None:
    # Each kind once more, one at a time: whatever was evicted last loads again.
    for call in _stream(tight_server, ROUNDS):
        call()
    assert all(model["state"] != "failed" for model in tight_server.scheduler()["models"].values())
