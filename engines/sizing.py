"""The planned footprint of a model whose catalog entry declares none (`memory_bytes` = 0).

The scheduler places models by their footprints; an undeclared one used to count as nothing
until its first load measured it, while vLLM, left alone, takes 0.92 of the device for its KV
cache. So before anything loads, every undeclared model gets a plan from its files:

- vLLM: weights + KV cache + `vllm_overhead_bytes`. The cache holds `default_sequences`
  sequences of `max_model_len` tokens (options.max_model_len, else config.json's context
  capped at `default_max_model_len`) at 2 x layers x KV heads x head_dim x dtype bytes a
  token (engines/llm/sizing.py), at most `kv_cache_share` of the device budget and never less
  than one full-length sequence. vLLM is then given exactly that cache and context.
- diffusers, transformers, faster-whisper, Coqui: weights x `activation_factor`, weights at
  the width the engine computes in (diffusers and transformers load float32 on CPU).

Settings: server/settings.py `scheduler`; the reasoning: docs/architecture.md.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Protocol, runtime_checkable

import msgspec

from engines.base import ModelSpec
from engines.devices import HOST, DeviceMemory, host_total_bytes
from engines.llm.parallel import parallel_options
from engines.llm.sizing import (
    VLLM_DEFAULT_MODEL_LEN,
    config_model_len,
    engine_options,
    kv_bytes_per_token,
    kv_dtype_bytes,
    read_config,
    weight_bytes,
)
from engines.weights import local_folder, model_weight_bytes, pipeline_weight_bytes

log = logging.getLogger("omniserve.sizing")

# vLLM allocates its cache in blocks of 16 to 128 tokens: a sequence is planned in whole
# blocks of the largest, so one full-length sequence always fits what vLLM checks for.
_BLOCK_TOKENS = 128


class SizingPolicy(msgspec.Struct, kw_only=True, frozen=True):
    """The rule's parameters (settings `scheduler`; defaults and reasons there)."""

    default_sequences: int = 4
    default_max_model_len: int = 8192
    kv_cache_share: float = 0.25
    vllm_overhead_bytes: int = 1 << 30
    activation_factor: float = 1.5


class Footprint(msgspec.Struct, kw_only=True, frozen=True):
    """A model's planned memory on its device, by part."""

    device: str
    device_total_bytes: int = 0  # the device's memory; 0 when not known
    weights_bytes: int
    kv_cache_bytes: int = 0  # vLLM only
    max_model_len: int | None = None  # vLLM: the context the cache was planned for
    headroom_bytes: int  # activations and the engine's own runtime

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.headroom_bytes


@runtime_checkable
class PlannedEngine(Protocol):
    """An engine that sizes itself by the scheduler's plan (vLLM: its KV cache and context)."""

    def use_footprint(self, plan: Footprint) -> None: ...


class FootprintTooLarge(Exception):
    """Undeclared models whose planned footprints exceed their device's whole budget."""

    def __init__(self, plans: dict[str, tuple[Footprint, int]]) -> None:
        self.plans = plans
        lines = [
            f"model {name}: planned {_gib(plan.total_bytes)} ({_parts(plan)}) on {plan.device}, "
            f"whose budget is {_gib(budget)}"
            for name, (plan, budget) in plans.items()
        ]
        super().__init__(
            "\n".join(
                [
                    *lines,
                    "Such a model could never load. Raise scheduler.host_budget / gpu_budget, lower "
                    "options.max_model_len or scheduler.default_sequences, or declare memory_bytes.",
                ]
            )
        )


def _gib(size: int) -> str:
    return f"{size / 1024**3:.2f} GiB"


def _parts(plan: Footprint) -> str:
    cache = f" + KV cache {_gib(plan.kv_cache_bytes)}" if plan.kv_cache_bytes else ""
    return f"weights {_gib(plan.weights_bytes)}{cache} + headroom {_gib(plan.headroom_bytes)}"


def planned_cache_bytes(per_token: int, max_model_len: int, budget_bytes: int | None, policy: SizingPolicy) -> int:
    """`default_sequences` full-length sequences, at most `kv_cache_share` of the budget,
    never less than one sequence (vLLM refuses a cache that cannot hold one). Without a
    per-token size (config.json unreadable), the budget's share itself."""
    share = int(budget_bytes * policy.kv_cache_share) if budget_bytes else None
    if per_token <= 0:
        return share or 0
    one_sequence = per_token * math.ceil(max_model_len / _BLOCK_TOKENS) * _BLOCK_TOKENS
    wanted = one_sequence * policy.default_sequences
    return max(min(wanted, share) if share is not None else wanted, one_sequence)


def _vllm_plan(
    spec: ModelSpec, folder: Path, device: str, budget: DeviceMemory | None, policy: SizingPolicy
) -> Footprint:
    config = read_config(folder) if folder.is_dir() else {}
    options = engine_options(spec.options, on_cpu=device == HOST)
    # Split over several GPUs, each holds its share of the weights and of every token's cache
    # (heads across tensor-parallel ranks, layers across pipeline stages); the footprint and
    # vLLM's kv_cache_memory_bytes are those of one GPU.
    gpus = parallel_options(spec.options).gpus
    per_token = math.ceil(kv_bytes_per_token(config, kv_dtype_bytes(options, config)) / gpus)
    option = options.get("max_model_len")
    if isinstance(option, int) and option > 0:
        max_model_len = option
    else:
        max_model_len = min(config_model_len(config) or VLLM_DEFAULT_MODEL_LEN, policy.default_max_model_len)
    weights = math.ceil(weight_bytes(options, folder) / gpus)
    total = budget.total_bytes if budget else 0
    cache = planned_cache_bytes(per_token, max_model_len, budget.budget_bytes if budget else None, policy)
    # Where the catalog sizes the cache itself, that is the cache the model holds.
    given = options.get("kv_cache_memory_bytes")
    utilization = options.get("gpu_memory_utilization")
    if isinstance(given, int) and given > 0:
        cache = given
    elif isinstance(utilization, (int, float)) and total > 0:
        cache = max(int(utilization * total) - weights - policy.vllm_overhead_bytes, 0)
    return Footprint(
        device=device,
        device_total_bytes=total,
        weights_bytes=weights,
        kv_cache_bytes=cache,
        max_model_len=max_model_len if per_token else None,
        headroom_bytes=policy.vllm_overhead_bytes,
    )


def _other_weights(spec: ModelSpec, folder: Path, device: str) -> int:
    """Weights in memory of the engines that load them whole into this process."""
    # diffusers computes in float16 on a GPU and float32 on CPU; transformers (the safety
    # classifiers) always in float32 (engines/image/pipelines.py, engines/image/safety.py).
    width = 2 if device.startswith("cuda") else 4
    if spec.engine == "diffusers":
        variant = spec.options.get("variant")
        total = pipeline_weight_bytes(folder, variant=variant if isinstance(variant, str) else None, float_bytes=width)
        adapter = spec.options.get("motion_adapter")  # AnimateDiff: loaded with the pipeline
        if isinstance(adapter, str) and (adapter_folder := local_folder(adapter)) is not None:
            total += model_weight_bytes(adapter_folder, float_bytes=width)
        return total
    if spec.engine == "transformers":
        return model_weight_bytes(folder, float_bytes=4)
    if spec.engine == "faster-whisper":
        model = folder / "model.bin"  # CTranslate2: one file, as stored
        return model.stat().st_size if model.is_file() else 0
    return model_weight_bytes(folder)  # Coqui .pth and the rest: as stored


def plan_footprint(
    spec: ModelSpec, *, device: str, budget: DeviceMemory | None, policy: SizingPolicy
) -> Footprint | None:
    """The planned footprint of an undeclared model on `device` (whose `budget` bounds a
    vLLM cache); None for a declared one, or when its files are not on this machine."""
    if spec.memory_bytes > 0:
        return None
    folder = local_folder(spec.path)
    if folder is None:
        log.warning("model %s: no files at %s to plan its footprint from", spec.name, spec.path)
        return None
    if spec.engine == "vllm":
        return _vllm_plan(spec, folder, device, budget, policy)
    weights = _other_weights(spec, folder, device)
    if weights <= 0:
        return None
    return Footprint(
        device=device,
        device_total_bytes=budget.total_bytes if budget else 0,
        weights_bytes=weights,
        headroom_bytes=int(weights * (policy.activation_factor - 1)),
    )


def standalone_plan(spec: ModelSpec) -> Footprint | None:
    """The plan for an engine loaded without a scheduler (a script, a test): the default
    policy against the whole host memory, so that it never takes vLLM's default share either."""
    total = host_total_bytes()
    host = DeviceMemory(name=HOST, total_bytes=total, budget_bytes=total)
    return plan_footprint(spec, device=HOST, budget=host, policy=SizingPolicy())
