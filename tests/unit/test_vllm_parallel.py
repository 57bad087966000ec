"""A vLLM model over several GPUs: the catalog's parallelism options are checked when the
catalog is read, reach vLLM's engine arguments typed, and the footprint planned is one GPU's."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from engines.base import ModelKind, ModelSpec
from engines.devices import DeviceMemory
from engines.llm.parallel import parallel_options
from engines.llm.runtime import engine_arguments
from engines.llm.sizing import cache_options
from engines.registry import CatalogError, ModelRegistry, vllm_factory
from engines.sizing import Footprint, SizingPolicy, plan_footprint
from tests.model_files import TINY_LLAMA, TINY_PER_TOKEN, llm_folder, safetensors

MB = 1 << 20
GB = 1 << 30
GPU = DeviceMemory(name="cuda:0", total_bytes=80 * GB, budget_bytes=72 * GB)


def chat(path: str = "/models/big", memory_bytes: int = 0, **options: Any) -> ModelSpec:
    return ModelSpec(name="big", kind=ModelKind.CHAT, path=path, memory_bytes=memory_bytes, options=options)


def registry(**options: Any) -> ModelRegistry:
    return ModelRegistry([chat(**options)], {"vllm": vllm_factory(cpu_threads=0)})


def arguments(spec: ModelSpec) -> dict[str, object]:
    return engine_arguments(spec, None, on_cpu=False, kind_options={}, runner=None, sleep_available=False)


def test_parallel_options_reach_the_engine_arguments(tmp_path: Path) -> None:
    folder = llm_folder(tmp_path, TINY_LLAMA)
    spec = chat(str(folder), tensor_parallel_size=4, pipeline_parallel_size=2, distributed_executor_backend="ray")
    args = arguments(spec)
    assert args["tensor_parallel_size"] == 4
    assert args["pipeline_parallel_size"] == 2
    assert args["distributed_executor_backend"] == "ray"
    from vllm.engine.arg_utils import AsyncEngineArgs

    built = AsyncEngineArgs(model=spec.path, **args)
    assert (built.tensor_parallel_size, built.pipeline_parallel_size) == (4, 2)
    assert built.distributed_executor_backend == "ray"


def test_a_model_on_one_gpu_sets_no_parallel_argument() -> None:
    args = arguments(chat())
    assert not {"tensor_parallel_size", "pipeline_parallel_size", "distributed_executor_backend"} & args.keys()
    assert arguments(chat(distributed_executor_backend="mp"))["distributed_executor_backend"] == "mp"


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"tensor_parallel_size": 0}, "tensor_parallel_size"),
        ({"pipeline_parallel_size": -2}, "pipeline_parallel_size"),
        ({"tensor_parallel_size": "2"}, "tensor_parallel_size"),
        ({"tensor_parallel_size": True}, "tensor_parallel_size"),
        ({"pipeline_parallel_size": 1.5}, "pipeline_parallel_size"),
        ({"distributed_executor_backend": "slurm"}, "distributed_executor_backend"),
    ],
)
def test_a_wrong_parallel_option_stops_the_catalog(options: dict[str, object], named: str) -> None:
    with pytest.raises(CatalogError) as caught:
        registry(**options)
    assert "model big" in str(caught.value) and named in str(caught.value)


def test_valid_parallel_options_load_and_count_gpus() -> None:
    engine = registry(tensor_parallel_size=8, pipeline_parallel_size=2, distributed_executor_backend="ray").get("big")
    assert engine is not None
    assert parallel_options(engine.spec.options).gpus == 16
    assert parallel_options({}).gpus == 1


def test_the_planned_footprint_is_one_gpus_share(tmp_path: Path) -> None:
    folder = llm_folder(tmp_path, TINY_LLAMA)
    policy = SizingPolicy()

    def plan(**options: Any) -> Footprint:
        planned = plan_footprint(chat(str(folder), **options), device=GPU.name, budget=GPU, policy=policy)
        assert planned is not None
        return planned

    whole = plan()
    split = plan(tensor_parallel_size=2, pipeline_parallel_size=2)
    assert split.weights_bytes == math.ceil(whole.weights_bytes / 4)
    assert whole.kv_cache_bytes == 4 * 1024 * TINY_PER_TOKEN  # four sequences of 1024 tokens
    assert split.kv_cache_bytes == 4 * 1024 * math.ceil(TINY_PER_TOKEN / 4)
    assert split.headroom_bytes == whole.headroom_bytes  # every GPU's worker has its own overhead


def test_a_declared_footprint_is_per_gpu(tmp_path: Path) -> None:
    safetensors(tmp_path / "model.safetensors", {"w": ("F16", [2 * MB])})  # 4 MiB of weights
    assert cache_options(chat(str(tmp_path), 5 * MB), None) == {"kv_cache_memory_bytes": MB}
    # On each of two GPUs: 2 MiB of weights, so 3 MiB of the declared 5 are cache.
    assert cache_options(chat(str(tmp_path), 5 * MB, tensor_parallel_size=2), None) == {"kv_cache_memory_bytes": 3 * MB}
