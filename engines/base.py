"""What every engine promises, independent of HTTP and of the library underneath."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec


class ModelKind(enum.StrEnum):
    CHAT = "chat"  # text generation; chat and completions
    EMBEDDING = "embedding"
    RERANK = "rerank"
    IMAGE = "image"  # diffusers text-to-image checkpoints (img2img/inpaint derive from them)
    SAFETY = "safety"  # image classifiers for NSFW detection on generated images
    UPSCALER = "upscaler"  # image super-resolution models (/v3 upscale)
    SEGMENTATION = "segmentation"  # foreground/background segmenters (/v3 remove-background)
    TRANSCRIPTION = "transcription"  # speech to text (faster-whisper)
    SPEECH = "speech"  # text to speech (Coqui TTS)
    VIDEO = "video"  # diffusers text-to-video and image-to-video pipelines
    CAPTION = "caption"  # transformers image-to-text models that describe an image (/v3 img2prompt)
    VARIATION = "variation"  # diffusers image-variation pipelines (/v3 reimagine)


class TextAdapter(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A LoRA adapter of a vLLM chat model, served under a model name of its own
    (catalog ``loras``, or added at runtime by the admin API). Not the image LoRAs, which are
    add-ons a request names (``LoraWeight``)."""

    name: str
    # A local PEFT folder: adapter_config.json and adapter_model.safetensors.
    path: str


class ModelSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One catalog entry."""

    name: str
    kind: ModelKind
    engine: str = "vllm"
    path: str
    # Passed to the engine library as they are (vLLM: AsyncEngineArgs fields).
    options: dict[str, Any] = {}
    # Declared device footprint; 0: planned from the files (engines/sizing.py), then measured at load.
    memory_bytes: int = 0
    # Loaded at startup and never evicted or unloaded for idleness.
    pinned: bool = False
    # Tool-call parser name for chat models (vLLM's parser names, e.g. "hermes").
    tool_parser: str | None = None
    # Reasoning parser name for chat models (vLLM's names, e.g. "deepseek_r1", "qwen3"): the
    # reasoning is answered apart, as reasoning_content, and kept out of content.
    reasoning_parser: str | None = None
    # LoRA adapters of a vLLM chat model, each a model name of its own (engines/llm/adapters.py).
    loras: list[TextAdapter] = []
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
    grammar: str | None = None  # EBNF (GBNF), as vLLM's structured outputs take it
    # The LoRA adapter (its model name) to generate with; None: the base model.
    adapter: str | None = None


class TokenChoice(msgspec.Struct, kw_only=True, array_like=True, gc=False):
    token: str
    logprob: float
    token_id: int = -1  # -1: not known


class TokenLogprobs(msgspec.Struct, kw_only=True, gc=False):
    """Log-probability of the chosen token and the top alternatives at one position."""

    token: str
    logprob: float
    top: list[TokenChoice]
    token_id: int = -1  # -1: not known
    rank: int | None = None  # the token's rank among all the vocabulary's (1: the likeliest)


class SequenceDelta(msgspec.Struct, kw_only=True, gc=False):
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprobs] | None = None
    finish_reason: str | None = None
    # The stop string that ended the sequence (finish_reason "stop"), when one did.
    stop_string: str | None = None


class GenerationStep(msgspec.Struct, kw_only=True, gc=False):
    """What one engine step produced for a request: new text per sequence."""

    prompt_tokens: int
    sequences: list[SequenceDelta]
    # Only on the first step, when asked for (echo with logprobs).
    prompt_logprobs: list[TokenLogprobs | None] | None = None


class MediaPrompt(msgspec.Struct, kw_only=True):
    """A prompt with images: its full token ids (each image's tokens in place of its placeholder)
    and the engine's own prepared input, passed back to ``generate`` as ``media``."""

    token_ids: list[int]
    engine_input: Any


class EngineInfo(msgspec.Struct, kw_only=True):
    max_model_len: int
    # Token ids 0 .. vocab_size - 1 are the model's (its tokenizer's and its embedding's):
    # the server refuses any other id a client sends before the tokenizer or the engine sees it.
    vocab_size: int
    # Whether the model takes images in its prompts (a vision-language model).
    accepts_images: bool = False


@runtime_checkable
class Engine(Protocol):
    spec: ModelSpec

    async def load(self) -> None: ...

    async def unload(self) -> None: ...

    def memory_bytes(self) -> int: ...

    async def health(self) -> bool: ...


@runtime_checkable
class SleepableEngine(Engine, Protocol):
    """An engine that can free its device memory while keeping its weights on the host,
    and come back faster than a load. The scheduler evicts such an engine by sleeping it
    when ``supports_sleep`` is true (it may depend on the platform and the loaded model)."""

    @property
    def supports_sleep(self) -> bool: ...

    async def sleep(self) -> None: ...

    async def wake(self) -> None: ...


@runtime_checkable
class DeviceSerialEngine(Engine, Protocol):
    """An engine that computes one job at a time on its device, together with every other such
    engine there (the diffusers pipelines, the upscaler, the safety classifier). The scheduler
    gives its leases turns on the device, one at a time: that turn is the only guard, so such an
    engine computes only inside a lease, and its calls keep the lease until their worker thread
    has stopped (engines.threads.run_cancellable). Priorities and per-key turns, not thread
    scheduling, decide which waiting job goes next. The attribute is a marker: only its presence
    counts."""

    device_serial: Literal[True]


@runtime_checkable
class AdapterEngine(Protocol):
    """An engine that serves LoRA adapters beside its base model."""

    def adapters(self) -> list[TextAdapter]: ...

    async def add_adapter(self, adapter: TextAdapter) -> None: ...

    def remove_adapter(self, name: str) -> None: ...


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
        continue_final_message: bool = False,
        template_kwargs: dict[str, Any] | None = None,
    ) -> list[int]: ...

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]: ...

    def detokenize(self, token_ids: Sequence[int]) -> str: ...

    def token_strings(self, token_ids: Sequence[int]) -> list[str]: ...

    def generate(
        self, prompt_token_ids: list[int], options: SamplingOptions, request_id: str, *, media: Any = None
    ) -> AsyncIterator[GenerationStep]:
        """``media``: what ``attach_images`` made of these ids, when the prompt has images."""
        ...

    async def attach_images(self, prompt_token_ids: list[int], images: list[Any]) -> MediaPrompt:
        """The prompt with its image placeholders widened to each image's tokens, as the model's
        processor does (only for models whose ``info.accepts_images``)."""
        ...

    async def abort(self, request_id: str) -> None: ...

    def tool_parser(self) -> Any | None: ...

    def reasoning_parser(self) -> Any | None: ...


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


class ClassifyResult(msgspec.Struct, kw_only=True):
    """Each input's class probabilities, and the classes' labels (index -> label)."""

    probs: list[list[float]]
    labels: list[str]
    prompt_tokens: int


@runtime_checkable
class ScoreEngine(Engine, Protocol):
    """A sequence classifier: scores (query, document) pairs, or classifies single texts."""

    @property
    def info(self) -> EngineInfo: ...

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]: ...

    async def score(self, pairs: list[tuple[str, str]], request_id: str) -> ScoreResult: ...

    async def classify(self, inputs: list[list[int]], request_id: str) -> ClassifyResult: ...

    async def abort(self, request_id: str) -> None: ...


class LoraWeight(msgspec.Struct, kw_only=True):
    name: str
    strength: float = 1.0


class HiresFix(msgspec.Struct, kw_only=True):
    """txt2img's second pass: the first result upscaled to width x height, then denoised again by `strength`."""

    width: int
    height: int
    strength: float
    # "Latent" upscales the latents; the other names resize the decoded image (engines/image/hires.py).
    upscaler: str = "Latent"


class ControlUnit(msgspec.Struct, kw_only=True):
    """One ControlNet condition on an img2img job."""

    name: str  # a key of the checkpoint's options.controlnets
    image: bytes  # encoded conditioning image, before the preprocessor
    strength: float = 1.0
    preprocessor: str = "none"
    guidance_start: float = 0.0
    guidance_end: float = 1.0


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
    vae: str | None = None  # a key of the checkpoint's options.vaes; None keeps the checkpoint's own
    hires_fix: HiresFix | None = None
    # SDXL ensemble of experts: the base denoises up to this fraction, the catalog's refiner the rest.
    refiner_switch_at: float | None = None
    controlnets: list[ControlUnit] = []


class ImageDefaults(msgspec.Struct, kw_only=True, frozen=True):
    """What an image model's family runs with where a client sent nothing, and which rules its
    wire fields follow. The SD 1.x / SDXL engine has none: the routes' own defaults apply."""

    steps: int
    # None: the family takes no guidance (FLUX.1 schnell), and a client's value is refused.
    guidance_scale: float | None
    # Width and height must be multiples of this.
    side_multiple: int = 8
    # The one sampler name the family accepts (its own scheduler); None: A1111 names choose one.
    own_sampler: str | None = None


class ImageResult(msgspec.Struct, kw_only=True):
    images: list[Any]  # PIL.Image.Image, encoded by the caller into the requested format
    seed: int


# Called from the worker thread with the fraction done (0..1); must be thread-safe.
ProgressCallback = Callable[[float], None]


@runtime_checkable
class ImageEngine(Engine, Protocol):
    async def generate(self, job: ImageGeneration, progress: ProgressCallback | None = None) -> ImageResult: ...


@runtime_checkable
class FamilyImageEngine(ImageEngine, Protocol):
    """An image engine whose model family sets its own defaults and refuses what means nothing
    to it (the flow-matching families: FLUX.1, SD3, Qwen-Image). Both work on an unloaded engine."""

    @property
    def image_defaults(self) -> ImageDefaults: ...

    # Raises engines.errors.InvalidJob naming the job field the family cannot honour.
    def check_job(self, job: ImageGeneration) -> None: ...


@runtime_checkable
class BatchImageEngine(ImageEngine, Protocol):
    """An image engine that can run several jobs as one pipeline call (an optional capability)."""

    # Jobs with equal keys may share a call; None: this job runs alone. Needs no loaded model.
    def batch_key(self, job: ImageGeneration) -> Hashable | None: ...

    # One result per job, in order, each as `generate` would give it for the same job and seed.
    async def generate_batch(
        self, jobs: list[ImageGeneration], progress: ProgressCallback | None = None
    ) -> list[ImageResult]: ...


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


@runtime_checkable
class SegmentationEngine(Engine, Protocol):
    # The foreground of a PIL image as a PIL "L" mask of the image's own size: 255 where the
    # subject is, 0 where the background is, soft values along its edges (an alpha channel).
    async def segment(self, image: Any) -> Any: ...


class Caption(msgspec.Struct, kw_only=True):
    """What a captioner wrote about an image, and how many tokens it generated for it."""

    text: str
    generated_tokens: int


@runtime_checkable
class CaptionEngine(Engine, Protocol):
    # The image (PIL) described in words, as a prompt that could draw it.
    async def caption(self, image: Any) -> Caption: ...


class VariationJob(msgspec.Struct, kw_only=True):
    """One image variation in engine terms: the encoded input image (PNG/JPEG/WebP), already
    checked, and the seed of its noise (the same job and seed give the same pixels)."""

    image: bytes
    seed: int


@runtime_checkable
class VariationEngine(Engine, Protocol):
    # A variation of the image (PIL), of the input image's size.
    async def vary(self, job: VariationJob, progress: ProgressCallback | None = None) -> Any: ...


class SpeechJob(msgspec.Struct, kw_only=True):
    """One text to speak, in engine terms: voice and language already checked against the engine."""

    text: str
    voice: str  # one of the engine's voices(): a catalog alias or one of the model's own speakers
    language: str | None = None  # a code the engine accepts; None: the model's first language
    speed: float = 1.0  # 2.0 speaks twice as fast
    seed: int = 0  # the same job and seed give the same samples


class SpeechAudio(msgspec.Struct, kw_only=True):
    """Mono float32 samples in [-1, 1] (a numpy array) and their rate; `text` is what they say."""

    samples: Any
    sample_rate: int
    text: str = ""


@runtime_checkable
class SpeechEngine(Engine, Protocol):
    # Valid once loaded: what a request may name, so services check before they queue.
    def voices(self) -> list[str]: ...

    def languages(self) -> list[str]: ...

    def accepts_language(self, language: str) -> bool: ...

    # Whether the text holds anything the model can pronounce (a character model drops unknown scripts).
    def can_speak(self, text: str, language: str | None = None) -> bool: ...

    # One chunk per sentence, each yielded as soon as it is synthesized; pauses between sentences included.
    def stream(self, job: SpeechJob) -> AsyncIterator[SpeechAudio]: ...

    async def synthesize(self, job: SpeechJob) -> SpeechAudio: ...


class TranscriptionTask(enum.StrEnum):
    TRANSCRIBE = "transcribe"  # text in the spoken language
    TRANSLATE = "translate"  # English text, whatever the spoken language


class TranscriptionJob(msgspec.Struct, kw_only=True):
    """One speech-to-text job in engine terms: language and limits already checked."""

    # 16 kHz mono float32 samples (numpy), as engines.audio.decoding gives them; or the
    # encoded file's bytes, which the engine then decodes itself.
    audio: Any
    task: TranscriptionTask = TranscriptionTask.TRANSCRIBE
    language: str | None = None  # a code of the engine's languages(); None: detect it
    prompt: str | None = None  # earlier text or spellings the decoder should follow
    # A value is used alone; None: the model's own fallback schedule (raises it on bad decodes).
    temperature: float | None = None
    beam_size: int | None = None  # None: the model's default
    word_timestamps: bool = False
    # Skip non-speech with a voice activity detector; None: the engine decides (see the engine).
    vad_filter: bool | None = None
    # Decode chunks of the audio in parallel; None: the engine decides by duration.
    batched: bool | None = None


class TranscribedWord(msgspec.Struct, kw_only=True, gc=False):
    word: str
    start: float
    end: float
    probability: float


class TranscribedSegment(msgspec.Struct, kw_only=True):
    """One decoded stretch of speech; times in seconds from the start of the audio."""

    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[TranscribedWord] | None = None  # with word_timestamps only


class TranscriptionResult(msgspec.Struct, kw_only=True):
    language: str  # the code given, or the one detected
    language_probability: float
    duration: float  # seconds of input audio
    segments: list[TranscribedSegment]


@runtime_checkable
class TranscriptionEngine(Engine, Protocol):
    # Valid once loaded: the language codes a job may name (["en"] for English-only models).
    def languages(self) -> list[str]: ...

    async def transcribe(self, job: TranscriptionJob) -> TranscriptionResult: ...

    # Each segment as soon as it is decoded; closing the iterator stops the decoding.
    def transcribe_stream(self, job: TranscriptionJob) -> AsyncIterator[TranscribedSegment]: ...


VideoMode = Literal["text-to-video", "image-to-video"]


class VideoPrompt(msgspec.Struct, kw_only=True):
    """One segment of a text-to-video job: `frames` consecutive frames conditioned on `prompt`."""

    prompt: str
    frames: int


class VideoGeneration(msgspec.Struct, kw_only=True):
    """One video job in engine terms: already validated, seed already drawn.

    Text-to-video fills `prompts` (the frame count is their sum); image-to-video fills `image`
    and `num_frames`.
    """

    width: int
    height: int
    steps: int
    seed: int
    prompts: list[VideoPrompt] = []
    negative_prompt: str = ""
    guidance_scale: float | None = None  # None keeps the pipeline's default
    clip_skip: int | None = None  # A1111 numbering: 1 is the last layer
    loras: list[LoraWeight] = []
    embeddings: list[str] = []
    # The last frame leads back into the first, so the video plays as a seamless loop.
    closed_loop: bool = False
    # Image-to-video: the encoded conditioning image (PNG/JPEG/WebP), resized by the engine.
    image: bytes | None = None
    num_frames: int = 0
    # Image-to-video models that also read text (Wan, LTX-Video): what the video shows.
    image_prompt: str = ""
    # The frame rate the video is made for (Stable Video Diffusion's and LTX-Video's conditioning).
    fps: int = 6
    # Stable Video Diffusion's micro-conditioning: amount of motion, noise added to the
    # conditioning image. None: not asked (the engine uses SVD's 127 and 0.02).
    motion_bucket_id: int | None = None
    noise_aug_strength: float | None = None
    # Flow-matching models (Wan, HunyuanVideo): the scheduler's shift, for faster or slower motion.
    flow_shift: float | None = None

    @property
    def frame_count(self) -> int:
        return sum(p.frames for p in self.prompts) if self.prompts else self.num_frames


class VideoResult(msgspec.Struct, kw_only=True):
    frames: Any  # numpy uint8 array (frames, height, width, 3), RGB
    seed: int


@runtime_checkable
class VideoEngine(Engine, Protocol):
    # What the model makes, known from the catalog without loading it.
    @property
    def mode(self) -> VideoMode: ...

    # Frames a second the model was made for (catalog option "fps").
    @property
    def fps(self) -> int: ...

    # The size the model was trained at (width, height): where a request leaves it open.
    @property
    def native_size(self) -> tuple[int, int]: ...

    async def generate(self, job: VideoGeneration, progress: ProgressCallback | None = None) -> VideoResult: ...


# The catalog kinds whose models serve each engine protocol: what the scheduler checks, from the
# catalog alone, before it leases a model as that protocol. BatchImageEngine is an optional
# capability of image engines: lease as ImageEngine, then test isinstance(engine, BatchImageEngine).
SERVED_KINDS: dict[type, frozenset[ModelKind]] = {
    Engine: frozenset(ModelKind),
    TextGenerationEngine: frozenset({ModelKind.CHAT}),
    EmbeddingEngine: frozenset({ModelKind.EMBEDDING}),
    ScoreEngine: frozenset({ModelKind.RERANK}),
    ImageEngine: frozenset({ModelKind.IMAGE}),
    BatchImageEngine: frozenset({ModelKind.IMAGE}),
    UpscaleEngine: frozenset({ModelKind.UPSCALER}),
    SafetyEngine: frozenset({ModelKind.SAFETY}),
    SegmentationEngine: frozenset({ModelKind.SEGMENTATION}),
    SpeechEngine: frozenset({ModelKind.SPEECH}),
    TranscriptionEngine: frozenset({ModelKind.TRANSCRIPTION}),
    VideoEngine: frozenset({ModelKind.VIDEO}),
    CaptionEngine: frozenset({ModelKind.CAPTION}),
    VariationEngine: frozenset({ModelKind.VARIATION}),
}


def served_kinds(protocol: type) -> frozenset[ModelKind]:
    """The catalog kinds that serve `protocol` (a key of SERVED_KINDS)."""
    try:
        return SERVED_KINDS[protocol]
    except KeyError:
        raise TypeError(f"{protocol.__qualname__} is not an engine protocol the scheduler leases") from None
