"""What every engine promises, independent of HTTP and of the library underneath."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import msgspec


class ModelKind(enum.StrEnum):
    CHAT = "chat"  # text generation; chat and completions
    EMBEDDING = "embedding"
    RERANK = "rerank"
    IMAGE = "image"  # diffusers text-to-image checkpoints (img2img/inpaint derive from them)
    SAFETY = "safety"  # image classifiers for NSFW detection on generated images
    UPSCALER = "upscaler"  # image super-resolution models (/v3 upscale)
    TRANSCRIPTION = "transcription"  # speech to text (faster-whisper)
    SPEECH = "speech"  # text to speech (Coqui TTS)
    VIDEO = "video"  # diffusers text-to-video and image-to-video pipelines


class ModelSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One catalog entry."""

    name: str
    kind: ModelKind
    engine: str = "vllm"
    path: str
    # Passed to the engine library as they are (vLLM: AsyncEngineArgs fields).
    options: dict[str, Any] = {}
    # Declared device footprint; 0 means measure after load.
    memory_bytes: int = 0
    # Tool-call parser name for chat models (vLLM's parser names, e.g. "hermes").
    tool_parser: str | None = None
    # Whether the model honours a `dimensions` request (Matryoshka embeddings).
    supports_dimensions: bool = False
    aliases: list[str] = []


class SamplingOptions(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Engine-neutral sampling parameters."""

    n: int = 1
    max_tokens: int = 16
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: list[str] = []
    stop_token_ids: list[int] = []
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[int, float] | None = None
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    # Structured output: at most one of these.
    json_schema: Any = None
    # No free whitespace inside generated JSON (tool arguments need none).
    compact_json: bool = False
    json_object: bool = False
    regex: str | None = None
    choice: list[str] | None = None


class TokenChoice(msgspec.Struct, kw_only=True, array_like=True, gc=False):
    token: str
    logprob: float


class TokenLogprobs(msgspec.Struct, kw_only=True, gc=False):
    """Log-probability of the chosen token and the top alternatives at one position."""

    token: str
    logprob: float
    top: list[TokenChoice]


class SequenceDelta(msgspec.Struct, kw_only=True, gc=False):
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprobs] | None = None
    finish_reason: str | None = None


class GenerationStep(msgspec.Struct, kw_only=True, gc=False):
    """What one engine step produced for a request: new text per sequence."""

    prompt_tokens: int
    sequences: list[SequenceDelta]
    # Only on the first step, when asked for (echo with logprobs).
    prompt_logprobs: list[TokenLogprobs | None] | None = None


class EngineInfo(msgspec.Struct, kw_only=True):
    max_model_len: int


@runtime_checkable
class Engine(Protocol):
    spec: ModelSpec

    async def load(self) -> None: ...

    async def unload(self) -> None: ...

    def memory_bytes(self) -> int: ...

    async def health(self) -> bool: ...


@runtime_checkable
class TextGenerationEngine(Engine, Protocol):
    @property
    def info(self) -> EngineInfo: ...

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        template_kwargs: dict[str, Any] | None = None,
    ) -> list[int]: ...

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]: ...

    def detokenize(self, token_ids: Sequence[int]) -> str: ...

    def token_strings(self, token_ids: Sequence[int]) -> list[str]: ...

    def generate(
        self, prompt_token_ids: list[int], options: SamplingOptions, request_id: str
    ) -> AsyncIterator[GenerationStep]: ...

    async def abort(self, request_id: str) -> None: ...

    def tool_parser(self) -> Any | None: ...


class EmbeddingResult(msgspec.Struct, kw_only=True):
    vectors: list[list[float]]
    prompt_tokens: int


@runtime_checkable
class EmbeddingEngine(Engine, Protocol):
    @property
    def info(self) -> EngineInfo: ...

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]: ...

    async def embed(self, inputs: list[list[int]], request_id: str) -> EmbeddingResult: ...

    async def abort(self, request_id: str) -> None: ...


class ScoreResult(msgspec.Struct, kw_only=True):
    scores: list[float]
    prompt_tokens: int


@runtime_checkable
class ScoreEngine(Engine, Protocol):
    @property
    def info(self) -> EngineInfo: ...

    async def score(self, pairs: list[tuple[str, str]], request_id: str) -> ScoreResult: ...

    async def abort(self, request_id: str) -> None: ...


class LoraWeight(msgspec.Struct, kw_only=True):
    name: str
    strength: float = 1.0


class ImageGeneration(msgspec.Struct, kw_only=True):
    """One image job in engine terms: already validated, seed already drawn."""

    prompt: str
    negative_prompt: str = ""
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    image_num: int = 1
    sampler: str | None = None  # A1111 name, e.g. "Euler a"; None keeps the pipeline's own
    clip_skip: int | None = None
    loras: list[LoraWeight] = []
    embeddings: list[str] = []
    # img2img / inpainting: encoded image bytes (PNG/JPEG/WebP) and denoising strength.
    init_image: bytes | None = None
    mask_image: bytes | None = None
    strength: float | None = None


class ImageResult(msgspec.Struct, kw_only=True):
    images: list[Any]  # PIL.Image.Image, encoded by the caller into the requested format
    seed: int


# Called from the worker thread with the fraction done (0..1); must be thread-safe.
ProgressCallback = Callable[[float], None]


@runtime_checkable
class ImageEngine(Engine, Protocol):
    async def generate(self, job: ImageGeneration, progress: ProgressCallback | None = None) -> ImageResult: ...


@runtime_checkable
class SafetyEngine(Engine, Protocol):
    # Per image (PIL), the probability of each of the classifier's labels; they sum to 1.
    async def classify(self, images: list[Any]) -> list[dict[str, float]]: ...


class UpscaleJob(msgspec.Struct, kw_only=True):
    """One upscale in engine terms: the encoded input image (PNG/JPEG/WebP) and the factor, validated."""

    image: bytes
    scale: float


def upscaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The exact output size of an upscale: each side times `scale`, rounded."""
    return round(width * scale), round(height * scale)


@runtime_checkable
class UpscaleEngine(Engine, Protocol):
    # The upscaled image (PIL) at exactly upscaled_size(input size, job.scale).
    async def upscale(self, job: UpscaleJob, progress: ProgressCallback | None = None) -> Any: ...
