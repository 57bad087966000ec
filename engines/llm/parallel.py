"""How a vLLM model is split over several GPUs: the catalog's parallelism options, typed.

A model too big for one GPU runs with `tensor_parallel_size` GPUs of one node (its weights
split across them), and, across nodes, with `pipeline_parallel_size` stages of layers on a
Ray cluster (`distributed_executor_backend = "ray"`). These options are vLLM's own engine
arguments and reach it unchanged; they are read here so that a wrong one (a string, 0, an
unknown backend) stops the catalog at load rather than the engine at its first load, and so
that the footprint the scheduler plans is the share of each GPU (engines/llm/sizing.py).
See docs/deployment.md.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

PARALLEL_OPTIONS = ("tensor_parallel_size", "pipeline_parallel_size", "distributed_executor_backend")


class ParallelOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # GPUs each layer's tensors are split across (one node: they talk over NVLink or PCIe).
    tensor_parallel_size: int = 1
    # Stages of consecutive layers, usually one per node.
    pipeline_parallel_size: int = 1
    # How vLLM starts its workers: "mp" (processes of one node) or "ray" (a Ray cluster, which
    # several nodes need). Unset: vLLM chooses ("mp" when the node has the GPUs).
    distributed_executor_backend: Literal["ray", "mp"] | None = None

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1 or self.pipeline_parallel_size < 1:
            raise ValueError("tensor_parallel_size and pipeline_parallel_size must be at least 1")

    @property
    def gpus(self) -> int:
        """GPUs the model runs on, all nodes together; each holds this share of it."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def engine_arguments(self) -> dict[str, Any]:
        """The vLLM engine arguments these options set (those left at vLLM's default omitted)."""
        return {
            name: value for name, value in msgspec.structs.asdict(self).items() if value != getattr(_DEFAULTS, name)
        }


_DEFAULTS = ParallelOptions()


def parallel_options(options: dict[str, Any]) -> ParallelOptions:
    """The parallelism a catalog entry's options ask for; ValueError naming the wrong one.
    Strict: `tensor_parallel_size = "2"` or `true` is refused, not read as 2 or 1."""
    chosen = {name: options[name] for name in PARALLEL_OPTIONS if name in options}
    try:
        return msgspec.convert(chosen, ParallelOptions)
    except msgspec.ValidationError as exc:
        raise ValueError(f"options: {exc}") from None
