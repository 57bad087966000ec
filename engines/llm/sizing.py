"""vLLM's KV cache: its size per token from config.json, and the engine arguments that hold
vLLM to the footprint the scheduler placed the model with.

Left alone, vLLM sizes its cache from the whole device (`gpu_memory_utilization`, 0.92 of a
CPU node) and overruns the budget the scheduler planned with: the next model fails to load.
So the cache is always given in bytes: what a declared footprint leaves after the weights,
or, for an undeclared model, the cache engines/sizing.py planned. The catalog may still size
it itself (`kv_cache_memory_bytes` or `gpu_memory_utilization` in its options).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.devices import HOST
from engines.llm.parallel import parallel_options
from engines.weights import model_weight_bytes

if TYPE_CHECKING:
    from engines.base import ModelSpec
    from engines.sizing import Footprint

# Options by which the catalog sizes the cache itself.
_CACHE_OPTIONS = frozenset({"kv_cache_memory_bytes", "gpu_memory_utilization"})

# Bytes per element of vLLM's dtype names (`dtype`, `kv_cache_dtype`) and config.json's.
DTYPE_BYTES = {
    "float64": 8,
    "double": 8,
    "float32": 4,
    "float": 4,
    "fp32": 4,
    "float16": 2,
    "half": 2,
    "fp16": 2,
    "bfloat16": 2,
    "bf16": 2,
}
# config.json keys that bound the context, as vLLM reads them: the smallest present wins.
_LENGTH_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
# The context vLLM assumes when config.json names none.
VLLM_DEFAULT_MODEL_LEN = 2048
# On CPU, vLLM left to choose (dtype "auto") computes a float32 checkpoint in bfloat16, and its
# bfloat16 CPU kernels kill the engine process (SIGILL) at the first step on some x86 machines
# that report bfloat16 support (the project's test VMs); float32 runs everywhere. So on CPU a
# catalog entry without a dtype gets this one, and is sized for it.
CPU_DTYPE = "float32"


def engine_options(options: dict[str, Any], *, on_cpu: bool) -> dict[str, Any]:
    """The catalog's options with the dtype the engine will use where they name none."""
    return {"dtype": CPU_DTYPE, **options} if on_cpu else options


def read_config(folder: Path) -> dict[str, Any]:
    """config.json, with a multimodal model's `text_config` (where its decoder's layers are
    described) laid over it; empty when there is none."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(config, dict):
        return {}
    text = config.get("text_config")
    return {**config, **text} if isinstance(text, dict) else config


def _int(config: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def model_dtype_bytes(options: dict[str, Any], config: dict[str, Any]) -> int:
    """Bytes per element the engine computes in: options.dtype, else the checkpoint's, else
    float32 (vLLM's default for a config without one; never an underestimate)."""
    for name in (options.get("dtype"), config.get("torch_dtype"), config.get("dtype")):
        if isinstance(name, str) and name.lower() in DTYPE_BYTES:
            return DTYPE_BYTES[name.lower()]
    return 4


def kv_dtype_bytes(options: dict[str, Any], config: dict[str, Any]) -> int:
    """Bytes per cached element: options.kv_cache_dtype (fp8 variants: 1), else the model's."""
    name = str(options.get("kv_cache_dtype", "auto")).lower()
    if name.startswith("fp8"):
        return 1
    return DTYPE_BYTES.get(name) or model_dtype_bytes(options, config)


def kv_bytes_per_token(config: dict[str, Any], dtype_bytes: int) -> int:
    """Cache bytes per token over all layers: a key and a value per layer, each
    num_key_value_heads x head_dim elements (head_dim = hidden_size / num_attention_heads
    unless config.json gives it); MLA models (DeepSeek) cache one latent of
    kv_lora_rank + qk_rope_head_dim per layer. 0 when config.json does not say."""
    layers = _int(config, "num_hidden_layers", "n_layer", "num_layers")
    if layers is None:
        return 0
    latent = _int(config, "kv_lora_rank")
    if latent is not None:
        return layers * (latent + (_int(config, "qk_rope_head_dim") or 0)) * dtype_bytes
    heads = _int(config, "num_attention_heads", "n_head")
    hidden = _int(config, "hidden_size", "n_embd", "d_model")
    head_dim = _int(config, "head_dim") or (hidden // heads if hidden and heads else None)
    if heads is None or head_dim is None:
        return 0
    kv_heads = _int(config, "num_key_value_heads") or (1 if config.get("multi_query") else heads)
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def config_model_len(config: dict[str, Any]) -> int | None:
    """The context config.json allows, as vLLM derives it (the smallest bound given)."""
    lengths = [value for key in _LENGTH_KEYS if (value := _int(config, key)) is not None]
    return min(lengths) if lengths else None


def weight_bytes(options: dict[str, Any], folder: Path) -> int:
    """The weights in memory: at options.dtype's width where it is set, else as stored."""
    dtype = options.get("dtype")
    width = DTYPE_BYTES.get(dtype.lower()) if isinstance(dtype, str) else None
    return model_weight_bytes(folder, float_bytes=width)


def _utilization(plan: Footprint) -> float:
    # vLLM on a GPU refuses to start unless total x gpu_memory_utilization is free, even with
    # kv_cache_memory_bytes given: ask for the planned footprint's share, no more.
    return min(math.ceil(plan.total_bytes / plan.device_total_bytes * 1000) / 1000, 1.0)


def cache_options(spec: ModelSpec, plan: Footprint | None, *, on_cpu: bool = False) -> dict[str, Any]:
    """The vLLM arguments that size the cache, unless the catalog sizes it itself.

    Declared footprint: `kv_cache_memory_bytes` = footprint - weights (activations are not
    counted: a footprint should leave them some headroom; smaller than the weights, nothing).
    Undeclared: the planned cache, the context it was planned for as `max_model_len`, and on a
    GPU the planned share of the device as `gpu_memory_utilization`."""
    if _CACHE_OPTIONS & spec.options.keys():
        return {}
    if spec.memory_bytes > 0:
        # A model split over several GPUs declares the footprint on each: its share of the weights.
        folder = Path(spec.path)
        weights = weight_bytes(engine_options(spec.options, on_cpu=on_cpu), folder) if folder.is_dir() else 0
        weights = math.ceil(weights / parallel_options(spec.options).gpus)
        cache = spec.memory_bytes - weights
        return {"kv_cache_memory_bytes": cache} if cache > 0 else {}
    if plan is None or plan.kv_cache_bytes <= 0:
        return {}
    options: dict[str, Any] = {"kv_cache_memory_bytes": plan.kv_cache_bytes}
    if plan.max_model_len is not None and "max_model_len" not in spec.options:
        options["max_model_len"] = plan.max_model_len
    if plan.device != HOST and plan.device_total_bytes > 0:
        options["gpu_memory_utilization"] = _utilization(plan)
    return options
