"""What the three vLLM engine kinds share: one AsyncLLM, its lifecycle and tokenizer."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from engines.base import EngineInfo, ModelSpec
from engines.llm.parallel import parallel_options
from engines.llm.sizing import cache_options, engine_options
from engines.sizing import Footprint, standalone_plan
from engines.workpools import WorkPool, run_in

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger("omniserve.engines.vllm")


def sleep_mode_available() -> bool:
    """Whether vLLM can sleep an engine on this platform (CUDA, ROCm and XPU; not CPU)."""
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_sleep_mode_available())
    except Exception:
        return False


def runs_on_cpu() -> bool:
    """Whether vLLM's platform here is the CPU (no GPU it supports)."""
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:
        return False


def vocab_size(llm: AsyncLLM, tokenizer: Any) -> int:
    """How many token ids the model knows. The tokenizer and the model's embedding may differ
    (a model pads its embedding, a tokenizer adds placeholder tokens): an id either knows is
    one vLLM takes in a prompt, as its own check does."""
    tokenizer_ids = int(getattr(tokenizer, "max_token_id", len(tokenizer) - 1)) + 1
    return max(tokenizer_ids, int(llm.model_config.get_vocab_size()))


def takes_images(llm: AsyncLLM) -> bool:
    """Whether vLLM runs this model with image inputs: its processor takes images and the
    catalog's limit_mm_per_prompt does not set them to 0."""
    config = llm.model_config
    if not config.is_multimodal_model or config.multimodal_config is None:
        return False
    try:
        supported = llm.renderer.mm_processor.info.get_supported_mm_limits()
    except Exception:  # no processor for this model: nothing it could take
        return False
    return "image" in supported and config.multimodal_config.get_limit_per_prompt("image") > 0


def engine_arguments(
    spec: ModelSpec,
    plan: Footprint | None,
    *,
    on_cpu: bool,
    kind_options: dict[str, Any],
    runner: str | None,
    sleep_available: bool,
) -> dict[str, Any]:
    """The AsyncEngineArgs fields (besides the model) a catalog entry loads with: the cache
    sized to its footprint, its kind's arguments, then the catalog's own options, which win;
    the parallelism ones among them typed (engines/llm/parallel.py)."""
    options: dict[str, Any] = {
        "enable_log_requests": False,
        "disable_log_stats": True,
        **cache_options(spec, plan, on_cpu=on_cpu),
        **kind_options,
        **engine_options(spec.options, on_cpu=on_cpu),
        **parallel_options(spec.options).engine_arguments(),
    }
    if runner is not None:
        options.setdefault("runner", runner)
    # Sleep mode lets the scheduler evict the model by moving its weights to host
    # memory (level 1) and wake it later instead of reloading; a catalog entry can
    # turn it off with options.enable_sleep_mode = false.
    if "enable_sleep_mode" not in options and sleep_available:
        options["enable_sleep_mode"] = True
    return options


class VllmEngineBase:
    """Owns an AsyncLLM, whose engine core always runs in a process of its own.

    vLLM binds the AsyncLLM to the event loop it first runs on, so it is created inside
    the serving loop and never shared across loops."""

    def __init__(self, spec: ModelSpec, *, cpu_threads: int = 0) -> None:
        self.spec = spec
        self.cpu_threads = cpu_threads
        self._llm: AsyncLLM | None = None
        self._info: EngineInfo | None = None
        self._tokenizer: Any = None
        self._sleep_enabled = False
        # The scheduler's plan for an undeclared model (engines/sizing.py); None until given.
        self._plan: Footprint | None = None

    def use_footprint(self, plan: Footprint) -> None:
        self._plan = plan

    @property
    def llm(self) -> AsyncLLM:
        if self._llm is None:
            raise RuntimeError(f"model {self.spec.name} is not loaded")
        return self._llm

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise RuntimeError(f"model {self.spec.name} is not loaded")
        return self._info

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    def _configure_process(self) -> None:
        # Read by the engine-core process vLLM spawns, which inherits our environment.
        if self.cpu_threads:
            os.environ["OMP_NUM_THREADS"] = str(self.cpu_threads)

    def _engine_kind_options(self) -> dict[str, Any]:
        """Engine arguments one engine kind adds (the catalog's options still win)."""
        return {}

    async def _start(self, runner: str | None = None) -> None:
        if self._llm is not None:
            return
        self._configure_process()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        # vLLM's own stat loggers feed a Prometheus registry omniserve does not serve and
        # cost the serving process several percent of a core under load; a catalog entry
        # can turn them back on with options.disable_log_stats = false. The cache is sized
        # from the declared or planned footprint unless the catalog sizes it
        # (engines/llm/sizing.py): never vLLM's default share of the device.
        # On CPU an entry without a dtype runs in float32 (engines/llm/sizing.py: CPU_DTYPE).
        if self._plan is None and not self.spec.memory_bytes:
            self._plan = await run_in(WorkPool.ENGINE, standalone_plan, self.spec)
        options = engine_arguments(
            self.spec,
            self._plan,
            on_cpu=runs_on_cpu(),
            kind_options=self._engine_kind_options(),
            runner=runner,
            sleep_available=sleep_mode_available(),
        )
        args = AsyncEngineArgs(model=self.spec.path, **options)
        log.info("loading model %s with vLLM", self.spec.name)
        # Construction blocks while the engine process starts (tens of seconds on a
        # small CPU machine), so it runs on a worker thread and the event loop keeps
        # answering /health. The AsyncLLM binds to the loop at its first request, which
        # happens on the serving loop.
        llm = await run_in(WorkPool.ENGINE, AsyncLLM.from_engine_args, args)
        self._llm = llm
        self._sleep_enabled = bool(options.get("enable_sleep_mode"))
        self._tokenizer = llm.get_tokenizer()
        self._info = EngineInfo(
            max_model_len=llm.model_config.max_model_len,
            vocab_size=vocab_size(llm, self._tokenizer),
            accepts_images=takes_images(llm),
        )

    async def unload(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.shutdown()

    def memory_bytes(self) -> int:
        # The engine core runs in a process of its own, which this process cannot measure:
        # what it was sized to hold is the best count there is.
        return self.spec.memory_bytes or (self._plan.total_bytes if self._plan else 0)

    @property
    def supports_sleep(self) -> bool:
        return self._llm is not None and self._sleep_enabled

    async def sleep(self) -> None:
        """Level 1: weights to host memory, KV cache dropped; device memory freed."""
        await self.llm.sleep(level=1)

    async def wake(self) -> None:
        await self.llm.wake_up()

    async def health(self) -> bool:
        if self._llm is None:
            return False
        try:
            await self._llm.check_health()
        except Exception:
            return False
        return True

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)

    def unfinished_requests(self) -> int:
        return self._llm.get_num_unfinished_requests() if self._llm is not None else 0

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise RuntimeError(f"model {self.spec.name} is not loaded")
        return self._tokenizer

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))
