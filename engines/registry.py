"""The model catalog turned into engine instances, looked up by name or alias."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, cast

from engines.base import Engine, ModelKind, ModelSpec

EngineFactory = Callable[[ModelSpec], Engine]


class CatalogError(ValueError):
    pass


def check_vllm_spec(spec: ModelSpec) -> None:
    """Refuses, at catalog load, what a vLLM model's entry names but vLLM does not know."""
    if spec.loras and spec.kind is not ModelKind.CHAT:
        raise CatalogError(f"model {spec.name}: loras are for chat models only")
    from engines.llm.parallel import parallel_options

    try:
        parallel_options(spec.options)
    except ValueError as exc:
        raise CatalogError(f"model {spec.name}: {exc}") from None
    if spec.reasoning_parser is None:
        return
    if spec.kind is not ModelKind.CHAT:
        raise CatalogError(f"model {spec.name}: reasoning_parser is for chat models only")
    from engines.llm.reasoning import check_reasoning_parser

    problem = check_reasoning_parser(spec.reasoning_parser)
    if problem is not None:
        raise CatalogError(f"model {spec.name}: {problem}")


def vllm_factory(*, cpu_threads: int) -> EngineFactory:
    def build(spec: ModelSpec) -> Engine:
        from engines.llm.generate import VllmTextEngine
        from engines.llm.pooling import VllmEmbeddingEngine, VllmScoreEngine

        check_vllm_spec(spec)

        engine_cls: type[Any] = {
            ModelKind.CHAT: VllmTextEngine,
            ModelKind.EMBEDDING: VllmEmbeddingEngine,
            ModelKind.RERANK: VllmScoreEngine,
        }[spec.kind]
        return cast(Engine, engine_cls(spec, cpu_threads=cpu_threads))

    return build


def diffusers_factory(*, device: str = "cpu") -> EngineFactory:
    def build(spec: ModelSpec) -> Engine:
        if spec.kind is ModelKind.UPSCALER:
            from engines.image.upscale import UpscalerEngine

            return cast(Engine, UpscalerEngine(spec, device=device))
        if spec.kind is ModelKind.VARIATION:
            from engines.image.variation import UnclipVariationEngine

            return cast(Engine, UnclipVariationEngine(spec, device=device))
        if spec.kind is ModelKind.VIDEO:
            from engines.video.pipelines import DiffusersVideoEngine

            return cast(Engine, DiffusersVideoEngine(spec, device=device))
        from engines.image.families import spec_family

        if spec_family(spec) is not None:  # FLUX.1, SD3 / 3.5, Qwen-Image: model_index.json decides
            from engines.image.flow import FlowImageEngine

            return cast(Engine, FlowImageEngine(spec, device=device))
        from engines.image.pipelines import DiffusersImageEngine

        return cast(Engine, DiffusersImageEngine(spec, device=device))

    return build


def _single_kind_factory(engine: str, kind: ModelKind, module: str, class_name: str, device: str) -> EngineFactory:
    """A factory for an engine library that serves one model kind; the library is imported on
    first use, so a catalog without such models never pays for it."""

    def build(spec: ModelSpec) -> Engine:
        if spec.kind is not kind:
            raise CatalogError(f"model {spec.name}: engine {engine!r} serves kind {kind.value!r} only")
        engine_cls = getattr(importlib.import_module(module), class_name)
        return cast(Engine, engine_cls(spec, device=device))

    return build


def transformers_factory(*, device: str = "cpu") -> EngineFactory:
    """Engines on plain transformers models: the NSFW classifiers (kind "safety"), the
    foreground segmenters (kind "segmentation") and the image captioners (kind "caption")."""
    by_kind = {
        ModelKind.SAFETY: _single_kind_factory(
            "transformers", ModelKind.SAFETY, "engines.image.safety", "SafetyClassifierEngine", device
        ),
        ModelKind.SEGMENTATION: _single_kind_factory(
            "transformers",
            ModelKind.SEGMENTATION,
            "engines.image.segmentation",
            "TransformersSegmentationEngine",
            device,
        ),
        ModelKind.CAPTION: _single_kind_factory(
            "transformers", ModelKind.CAPTION, "engines.image.caption", "CaptionerEngine", device
        ),
    }

    def build(spec: ModelSpec) -> Engine:
        factory = by_kind.get(spec.kind)
        if factory is None:
            kinds = ", ".join(repr(kind.value) for kind in by_kind)
            raise CatalogError(f"model {spec.name}: engine 'transformers' serves kinds {kinds} only")
        return factory(spec)

    return build


def esrgan_factory(*, device: str = "cpu") -> EngineFactory:
    """ESRGAN-family upscalers: one RRDBNet weights file (kind "upscaler"; engines/image/esrgan.py)."""
    return _single_kind_factory(
        "esrgan", ModelKind.UPSCALER, "engines.image.esrgan_upscale", "EsrganUpscalerEngine", device
    )


def faster_whisper_factory(*, device: str = "cpu") -> EngineFactory:
    """Speech-to-text engines on CTranslate2 Whisper models (kind "transcription")."""
    return _single_kind_factory(
        "faster-whisper", ModelKind.TRANSCRIPTION, "engines.audio.whisper", "WhisperEngine", device
    )


def coqui_factory(*, device: str = "cpu") -> EngineFactory:
    """Text-to-speech engines on Coqui TTS models (kind "speech")."""
    return _single_kind_factory("coqui", ModelKind.SPEECH, "engines.audio.coqui", "CoquiSpeechEngine", device)


class ModelRegistry:
    """Every served name: catalog names, aliases and LoRA adapters (whose names lead to the
    model they adapt), each unique."""

    def __init__(self, specs: list[ModelSpec], factories: dict[str, EngineFactory]) -> None:
        self._engines: dict[str, Engine] = {}
        self._names: dict[str, str] = {}
        # Adapter name -> the catalog name of its base model.
        self._adapters: dict[str, str] = {}
        for spec in specs:
            factory = factories.get(spec.engine)
            if factory is None:
                raise CatalogError(f"model {spec.name}: unknown engine {spec.engine!r}")
            for name in (spec.name, *spec.aliases, *(lora.name for lora in spec.loras)):
                if name in self._names:
                    raise CatalogError(f"model name {name!r} is used twice in the catalog")
                self._names[name] = spec.name
            self._adapters.update((lora.name, spec.name) for lora in spec.loras)
            self._engines[spec.name] = factory(spec)

    def get(self, name: str) -> Engine | None:
        """The engine serving ``name``: for an adapter, its base model's."""
        canonical = self._names.get(name)
        return None if canonical is None else self._engines[canonical]

    def adapter_base(self, name: str) -> str | None:
        """The catalog name of the model ``name`` adapts, when ``name`` is a LoRA adapter."""
        return self._adapters.get(name)

    def claim_adapter(self, name: str, base: str) -> bool:
        """Takes ``name`` for an adapter of ``base``; False when the name is taken."""
        if name in self._names:
            return False
        self._names[name] = self._adapters[name] = base
        return True

    def release_adapter(self, name: str) -> None:
        if self._adapters.pop(name, None) is not None:
            del self._names[name]

    def __iter__(self) -> Iterator[Engine]:
        return iter(self._engines.values())

    def __len__(self) -> int:
        return len(self._engines)
