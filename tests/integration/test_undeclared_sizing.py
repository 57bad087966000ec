"""Two chat models without memory_bytes or any cache option, on real vLLM with the host's real
default budget: both load side by side, each with the KV cache the sizing rule planned
(engines/sizing.py), not vLLM's default 0.92 of the node, which stops the second load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engines.admission import AdmissionPolicy
from engines.base import ModelKind, ModelSpec, SamplingOptions, TextGenerationEngine
from engines.demo import TINY_CHAT_MODEL
from engines.devices import HOST, discover_devices
from engines.llm.generate import VllmTextEngine
from engines.registry import ModelRegistry, vllm_factory
from engines.residency import Residency
from engines.scheduler import Scheduler
from engines.sizing import SizingPolicy
from server.settings import SchedulerSettings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def chat_folder(demo_root: Path) -> Path:
    """The session's tiny random chat model, served twice under two names."""
    return demo_root / TINY_CHAT_MODEL


def undeclared_chat(name: str, folder: Path) -> ModelSpec:
    # As `serve --model` makes them: no footprint, cache size, context length or dtype. Eager
    # mode only saves minutes of graph compilation on CPU.
    return ModelSpec(name=name, kind=ModelKind.CHAT, path=str(folder), options={"enforce_eager": True})


async def test_two_undeclared_chat_models_load_side_by_side(chat_folder: Path) -> None:
    defaults = SchedulerSettings()
    devices = discover_devices(defaults.host_budget, defaults.gpu_budget)
    specs = [undeclared_chat("first", chat_folder), undeclared_chat("second", chat_folder)]
    registry = ModelRegistry(specs, {"vllm": vllm_factory(cpu_threads=1)})
    sizing = SizingPolicy(
        default_sequences=defaults.default_sequences,
        default_max_model_len=defaults.default_max_model_len,
        kv_cache_share=defaults.kv_cache_share,
        vllm_overhead_bytes=defaults.vllm_overhead_bytes,
        activation_factor=defaults.activation_factor,
    )
    scheduler = Scheduler(registry, AdmissionPolicy(), devices, sizing)

    # The rule's cache, from the model's config.json: K and V per layer, in float32 (vLLM's
    # dtype on CPU here), for default_sequences sequences of its whole context (1024 tokens).
    config = json.loads((chat_folder / "config.json").read_text())
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    per_token = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * 4  # float32
    context = config["max_position_embeddings"]
    planned_cache = per_token * context * defaults.default_sequences
    weights = sum(t.numel() * t.element_size() for t in load_file(chat_folder / "model.safetensors").values())
    before = scheduler.report()
    for name in ("first", "second"):
        model = before.models[name]
        assert model.footprint_source == "estimated" and model.device == HOST
        assert model.footprint_bytes == weights + planned_cache + defaults.vllm_overhead_bytes
    try:
        await scheduler.load_all()
        assert scheduler.residency() == {"first": Residency.RESIDENT, "second": Residency.RESIDENT}
        after = scheduler.report()
        host = next(device for device in after.devices if device.name == HOST)
        # Both held at once, each by its plan (the engine's own count of what it was given).
        assert host.used_bytes == 2 * before.models["first"].footprint_bytes <= host.budget_bytes
        for name in ("first", "second"):
            engine = scheduler.engine(name, TextGenerationEngine)
            assert isinstance(engine, VllmTextEngine)
            cache_config = engine.llm.vllm_config.cache_config
            assert cache_config.kv_cache_memory_bytes == planned_cache
            assert cache_config.kv_cache_memory_bytes < host.total_bytes // 100  # not the node's 0.92
            assert engine.info.max_model_len == context
            # What the engine core really allocated: whole blocks within the planned bytes.
            element = torch.tensor([], dtype=engine.llm.model_config.dtype).element_size()
            block_bytes = cache_config.block_size * per_token // 4 * element
            allocated = (cache_config.num_gpu_blocks or 0) * block_bytes
            assert planned_cache - block_bytes < allocated <= planned_cache
            async with scheduler.lease(name, TextGenerationEngine) as leased:
                steps = [
                    step
                    async for step in leased.generate(
                        leased.tokenize("Hello"), SamplingOptions(max_tokens=4, ignore_eos=True), f"{name}-1"
                    )
                ]
            assert sum(len(step.sequences[0].token_ids) for step in steps) == 4
    finally:
        await scheduler.unload_all()
