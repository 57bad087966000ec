"""Engines that implement the protocols without a model: for fast unit tests only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from engines.base import (
    ClassifyResult,
    EmbeddingResult,
    EngineInfo,
    GenerationStep,
    ImageDefaults,
    ImageGeneration,
    ImageResult,
    MediaPrompt,
    ModelKind,
    ModelSpec,
    ProgressCallback,
    SamplingOptions,
    ScoreResult,
    SequenceDelta,
    TokenChoice,
    TokenLogprobs,
    UpscaleJob,
    upscaled_size,
)
from engines.image.families import RULES, FlowFamily, spec_family
from engines.image.flow import family_refusal

# Characters are the fakes' tokens: every code point is one.
FAKE_VOCAB_SIZE = 0x110000


def _token_text(token: int) -> str:
    """A surrogate is no text a JSON answer can carry: it reads as U+FFFD, as a real tokenizer
    shows a token that is part of a character."""
    return "\ufffd" if 0xD800 <= token <= 0xDFFF else chr(token)


class _FakeBase:
    def __init__(self, spec: ModelSpec, max_model_len: int = 64, fail_load: bool = False) -> None:
        self.spec = spec
        self.info = EngineInfo(max_model_len=max_model_len, vocab_size=FAKE_VOCAB_SIZE)
        self.loaded = False
        self.fail_load = fail_load
        self.aborted: list[str] = []

    async def load(self) -> None:
        if self.fail_load:
            raise RuntimeError("weights at /secret/path are corrupt")
        self.loaded = True

    async def unload(self) -> None:
        self.loaded = False

    def memory_bytes(self) -> int:
        return 0

    async def health(self) -> bool:
        return self.loaded

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return [ord(char) for char in text]


def fake_logprobs(token: int, top_n: int) -> TokenLogprobs:
    """The fakes' logprobs at one position: the token at -1.0 and, ranked above it, ``top_n``
    alternatives from "0" on (as a sampled token that was not among the likeliest)."""
    top = [
        TokenChoice(token=chr(ord("0") + rank), logprob=-0.5 - rank / 100, token_id=ord("0") + rank)
        for rank in range(top_n)
    ]
    return TokenLogprobs(token=_token_text(token), logprob=-1.0, top=top, token_id=token, rank=top_n + 1)


class FakeTextEngine(_FakeBase):
    """Characters are tokens; generation emits "ab" repeated, one token per step, with
    `fake_logprobs` when logprobs (or prompt logprobs) are asked for."""

    step_delay = 0.0
    last_options: SamplingOptions | None = None  # what the last generation was asked, for tests

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        template_kwargs: dict[str, Any] | None = None,
    ) -> list[int]:
        text = "".join(f"{m['role']}:{m['content']}\n" for m in messages)
        if tools:  # as a real template lists the tools before the conversation
            text = "tools:" + ",".join(tool["function"]["name"] for tool in tools) + "\n" + text
        if continue_final_message:  # the last message stays open, for the model to go on with
            text = text.removesuffix("\n")
        return self.tokenize(text + ("assistant:" if add_generation_prompt else ""))

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return "".join(_token_text(token) for token in token_ids)

    def token_strings(self, token_ids: Sequence[int]) -> list[str]:
        return [_token_text(token) for token in token_ids]

    def tool_parser(self) -> Any | None:
        return None

    def reasoning_parser(self) -> Any | None:
        return None

    async def attach_images(self, prompt_token_ids: list[int], images: list[Any]) -> MediaPrompt:
        raise AssertionError("the fake text engine takes no images")

    async def generate(
        self, prompt_token_ids: list[int], options: SamplingOptions, request_id: str, *, media: Any = None
    ) -> AsyncIterator[GenerationStep]:
        self.last_options = options
        finished = False
        try:
            for position in range(options.max_tokens):
                await asyncio.sleep(self.step_delay)
                last = position == options.max_tokens - 1
                char = "ab"[position % 2]
                logprobs = None if options.logprobs is None else [fake_logprobs(ord(char), options.logprobs)]
                step = GenerationStep(
                    prompt_tokens=len(prompt_token_ids),
                    sequences=[
                        SequenceDelta(
                            index=i,
                            text=char,
                            token_ids=[ord(char)],
                            logprobs=logprobs,
                            finish_reason="length" if last else None,
                        )
                        for i in range(options.n)
                    ],
                )
                if position == 0 and options.prompt_logprobs is not None:
                    step.prompt_logprobs = [None] + [
                        fake_logprobs(token, options.prompt_logprobs) for token in prompt_token_ids[1:]
                    ]
                yield step
            finished = True
        finally:
            if not finished:
                await self.abort(request_id)


class FakeEmbeddingEngine(_FakeBase):
    async def embed(self, inputs: list[list[int]], request_id: str) -> EmbeddingResult:
        vectors = [[float(len(ids)), float(sum(ids) % 7), 1.0, 0.5] for ids in inputs]
        return EmbeddingResult(vectors=vectors, prompt_tokens=sum(len(ids) for ids in inputs))


class FakeScoreEngine(_FakeBase):
    async def score(self, pairs: list[tuple[str, str]], request_id: str) -> ScoreResult:
        scores = [len(set(query.split()) & set(doc.split())) / 10 for query, doc in pairs]
        return ScoreResult(scores=scores, prompt_tokens=sum(len(q) + len(d) for q, d in pairs))

    async def classify(self, inputs: list[list[int]], request_id: str) -> ClassifyResult:
        """Two classes: "short" with probability 1/len, "long" with the rest."""
        probs = [[1 / len(ids), 1 - 1 / len(ids)] for ids in inputs]
        return ClassifyResult(probs=probs, labels=["short", "long"], prompt_tokens=sum(len(ids) for ids in inputs))


class FakeImageEngine(_FakeBase):
    """A solid colour derived from the seed, one image per requested seed."""

    last_job: ImageGeneration | None = None  # what the task layer asked for, for tests to inspect

    async def generate(self, job: ImageGeneration, progress: ProgressCallback | None = None) -> ImageResult:
        from PIL import Image

        self.last_job = job

        for step in range(1, job.steps + 1):
            await asyncio.sleep(0)
            if progress is not None:
                progress(step / job.steps)
        # A hires fix's second pass decides the output size.
        size = (job.hires_fix.width, job.hires_fix.height) if job.hires_fix else (job.width, job.height)
        images = [Image.new("RGB", size, ((job.seed + i) % 256, 40, 90)) for i in range(job.image_num)]
        return ImageResult(images=images, seed=job.seed)


class FakeFlowImageEngine(FakeImageEngine):
    """The fake image engine under a flow family's rules (options.family: FLUX.1, SD3, Qwen-Image),
    the real engine's defaults and refusals, so requests to it meet the family's checks."""

    @property
    def image_defaults(self) -> ImageDefaults:
        return RULES[self._family].defaults

    def check_job(self, job: ImageGeneration) -> None:
        refusal = family_refusal(self._family, job)
        if refusal is not None:
            raise refusal

    @property
    def _family(self) -> FlowFamily:
        family = spec_family(self.spec)
        assert family is not None, f"{self.spec.name} names no options.family"
        return family


class FakeSafetyEngine(_FakeBase):
    """NSFW label probabilities that grow with the image's mean red: the demo labels, summing to 1."""

    @staticmethod
    def probabilities(red: float) -> dict[str, float]:
        share = red / 255
        return {"normal": 1 - 0.9 * share, "swimwear": 0.2 * share, "suggestive": 0.3 * share, "explicit": 0.4 * share}

    async def classify(self, images: list[Any]) -> list[dict[str, float]]:
        from PIL import ImageStat

        return [self.probabilities(ImageStat.Stat(image.convert("RGB")).mean[0]) for image in images]


class FakeUpscalerEngine(_FakeBase):
    """A nearest-neighbour resize to the exact requested size."""

    async def upscale(self, job: UpscaleJob, progress: ProgressCallback | None = None) -> Any:
        import io

        from PIL import Image

        with Image.open(io.BytesIO(job.image)) as image:
            upscaled = image.convert("RGB").resize(upscaled_size(*image.size, job.scale), Image.Resampling.NEAREST)
        if progress is not None:
            progress(1.0)
        return upscaled


class FakeSleepableTextEngine(FakeTextEngine):
    """A text engine that sleeps on eviction: its weights stay "on the host" and wake() restores them."""

    def __init__(self, spec: ModelSpec, max_model_len: int = 64, fail_load: bool = False) -> None:
        super().__init__(spec, max_model_len, fail_load)
        self.asleep = False
        self.load_calls = 0
        self.sleep_calls = 0
        self.wake_calls = 0

    @property
    def supports_sleep(self) -> bool:
        return self.loaded

    async def load(self) -> None:
        self.load_calls += 1
        await super().load()

    async def unload(self) -> None:
        await super().unload()
        self.asleep = False

    async def sleep(self) -> None:
        self.sleep_calls += 1
        self.asleep = True

    async def wake(self) -> None:
        assert self.loaded and self.asleep, "woken without having slept"
        self.wake_calls += 1
        self.asleep = False


def sleepable_factory(spec: ModelSpec) -> Any:
    return FakeSleepableTextEngine(spec)


FAKE_SPECS = [
    ModelSpec(name="fake-chat", kind=ModelKind.CHAT, engine="fake", path="-", aliases=["fake-chat-alias"]),
    ModelSpec(name="fake-embed", kind=ModelKind.EMBEDDING, engine="fake", path="-"),
    ModelSpec(name="fake-rerank", kind=ModelKind.RERANK, engine="fake", path="-"),
    ModelSpec(name="fake-sd", kind=ModelKind.IMAGE, engine="fake", path="-", options={"loras": {"ok-lora": "-"}}),
]
# Not in FAKE_SPECS: without it, NSFW detection is off (as on a server with no classifier).
FAKE_SAFETY_SPEC = ModelSpec(name="fake-nsfw", kind=ModelKind.SAFETY, engine="fake", path="-")
FAKE_UPSCALER_SPEC = ModelSpec(name="fake-upscaler", kind=ModelKind.UPSCALER, engine="fake", path="-")


def fake_factory(spec: ModelSpec) -> Any:
    engine_cls = {
        ModelKind.CHAT: FakeTextEngine,
        ModelKind.EMBEDDING: FakeEmbeddingEngine,
        ModelKind.RERANK: FakeScoreEngine,
        ModelKind.IMAGE: FakeImageEngine,
        ModelKind.SAFETY: FakeSafetyEngine,
        ModelKind.UPSCALER: FakeUpscalerEngine,
    }[spec.kind]
    return engine_cls(spec, fail_load=spec.options.get("fail_load", False))
