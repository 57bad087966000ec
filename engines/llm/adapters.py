"""LoRA adapters of a vLLM chat model: each is served under a model name of its own and
passed to vLLM as a ``LoRARequest`` with the requests that name it.

vLLM must be started with LoRA support and the largest rank it will see: both follow from
the catalog's adapters (their adapter_config.json ``r``), or from ``options.enable_lora`` and
``options.max_lora_rank`` for a model that gets adapters only at runtime."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.base import ModelSpec, TextAdapter
from engines.errors import InvalidJob, ModelNotFound

if TYPE_CHECKING:
    from vllm.lora.request import LoRARequest

# The ranks vLLM accepts as max_lora_rank (vllm/config/lora.py MaxLoRARanks).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_MAX_RANK = 16  # vLLM's default


class AdapterError(ValueError):
    pass


def adapter_rank(path: str) -> int:
    """The adapter's rank (``r`` in its adapter_config.json): it must not exceed the rank
    the engine was started with."""
    config_file = Path(path) / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text())
    except OSError:
        raise AdapterError(f"no readable adapter_config.json in {path}") from None
    except ValueError:
        raise AdapterError(f"adapter_config.json in {path} is not JSON") from None
    rank = config.get("r") if isinstance(config, dict) else None
    if not isinstance(rank, int) or rank < 1:
        raise AdapterError(f"adapter_config.json in {path} has no rank r")
    if not Path(path, "adapter_model.safetensors").is_file() and not Path(path, "adapter_model.bin").is_file():
        raise AdapterError(f"no adapter_model.safetensors in {path}")
    return rank


def _engine_rank(rank: int) -> int:
    for allowed in LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise AdapterError(f"rank {rank} is above vLLM's largest, {LORA_RANKS[-1]}")


class _Served:
    def __init__(self, adapter: TextAdapter, lora_id: int) -> None:
        self.adapter = adapter
        self.lora_id = lora_id


class AdapterTable:
    """The adapters one engine serves, by name. Built from the catalog (files read at catalog
    load, so a bad adapter fails the start); runtime ones come and go with the admin API."""

    def __init__(self, spec: ModelSpec) -> None:
        self._served: dict[str, _Served] = {}
        self._next_id = 1  # vLLM's LoRA ids start at 1
        ranks = [adapter_rank(adapter.path) for adapter in spec.loras]
        configured = spec.options.get("max_lora_rank")
        self.enabled = bool(spec.loras) or bool(spec.options.get("enable_lora"))
        self.max_rank = int(configured) if configured else _engine_rank(max(ranks, default=DEFAULT_MAX_RANK))
        self._catalog_count = len(spec.loras)
        for adapter, rank in zip(spec.loras, ranks, strict=True):
            if rank > self.max_rank:
                raise AdapterError(f"adapter {adapter.name}: rank {rank} is above options.max_lora_rank")
            self._add(adapter)

    def engine_options(self) -> dict[str, Any]:
        """vLLM engine arguments for LoRA; the catalog's options, applied after, win."""
        if not self.enabled:
            return {}
        return {"enable_lora": True, "max_loras": max(1, self._catalog_count), "max_lora_rank": self.max_rank}

    def _add(self, adapter: TextAdapter) -> _Served:
        served = _Served(adapter, self._next_id)
        self._next_id += 1
        self._served[adapter.name] = served
        return served

    def list(self) -> list[TextAdapter]:
        return [served.adapter for served in self._served.values()]

    def add(self, adapter: TextAdapter, rank: int) -> LoRARequest:
        """Registers a runtime adapter; its rank is checked against the engine's."""
        if not self.enabled:
            raise InvalidJob(
                "This model was started without LoRA support: give it loras in the catalog, or "
                "options.enable_lora = true (with options.max_lora_rank).",
                "model",
            )
        if rank > self.max_rank:
            raise InvalidJob(f"The adapter's rank {rank} is above this model's max_lora_rank {self.max_rank}.", "path")
        return self._request(self._add(adapter))

    def remove(self, name: str) -> None:
        self._served.pop(name, None)

    def request(self, name: str) -> LoRARequest:
        served = self._served.get(name)
        if served is None:  # removed since the request was planned
            raise ModelNotFound(name)
        return self._request(served)

    @staticmethod
    def _request(served: _Served) -> LoRARequest:
        from vllm.lora.request import LoRARequest

        return LoRARequest(served.adapter.name, served.lora_id, served.adapter.path)
