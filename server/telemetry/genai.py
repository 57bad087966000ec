"""One engine call, recorded per the OpenTelemetry GenAI conventions: a span named
"{gen_ai.operation.name} {gen_ai.request.model}" and the gen_ai.server.* metrics.

`engine_call` (server/capabilities/calls.py) opens one around the lease, so queue wait and
model load nest under the call's span and count in its duration::

    async with engine_call(scheduler, model, EmbeddingEngine, "embeddings") as (engine, record):
        result = await engine.embed(inputs, request_id)
        record.usage(input_tokens=result.prompt_tokens)

Metrics are recorded whether or not tracing is on; span attributes only when the span
records, so a server without tracing pays for neither.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, StatusCode

from engines.base import GenerationStep, SamplingOptions
from schemas.errors import ApiError
from server.telemetry.instruments import (
    AUDIO_SECONDS,
    GENAI_DURATION,
    GENAI_TPOT,
    GENAI_TTFT,
    IMAGES,
    TOKENS,
    VIDEO_FRAMES,
)

PROVIDER_NAME = "omniserve"
_tracer = trace.get_tracer("omniserve.inference")


def error_type(exc: BaseException) -> str:
    """``error.type``: the API error code when there is one, else the exception's class."""
    if isinstance(exc, ApiError):
        return exc.code.value
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return "cancelled"  # the client left before the answer was complete
    return type(exc).__qualname__


class Inference:
    """The record of one engine call; an async context manager around the lease."""

    __slots__ = (
        "_first_token_at",
        "_started",
        "_token",
        "audio_seconds",
        "finish_reasons",
        "images",
        "input_tokens",
        "model",
        "operation",
        "output_tokens",
        "span",
        "video_frames",
    )

    def __init__(
        self,
        operation: str,
        model: str,
        *,
        options: SamplingOptions | None = None,
        response_id: str | None = None,
        input_tokens: int | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        self.operation = operation
        self.model = model
        self.input_tokens = input_tokens
        self.output_tokens: int | None = None
        self.finish_reasons: list[str] = []
        self.images = 0
        self.audio_seconds = 0.0
        self.video_frames = 0
        self._first_token_at: float | None = None
        self.span = _tracer.start_span(f"{operation} {model}", kind=SpanKind.INTERNAL)
        if self.span.is_recording():
            self.span.set_attributes(
                {
                    "gen_ai.operation.name": operation,
                    "gen_ai.provider.name": PROVIDER_NAME,
                    "gen_ai.request.model": model,
                }
            )
            if options is not None:
                self._set_options(options)
            if response_id is not None:
                self.span.set_attribute("gen_ai.response.id", response_id)
            if attributes:
                self.span.set_attributes(attributes)

    def _set_options(self, options: SamplingOptions) -> None:
        self.span.set_attribute("gen_ai.request.max_tokens", options.max_tokens)
        if options.n != 1:
            self.span.set_attribute("gen_ai.request.choice.count", options.n)
        for name in ("temperature", "top_p", "seed"):
            value = getattr(options, name)
            if value is not None:
                self.span.set_attribute(f"gen_ai.request.{name}", value)

    async def __aenter__(self) -> Inference:
        self._token = context.attach(trace.set_span_in_context(self.span))
        self._started = time.perf_counter()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        ended = time.perf_counter()
        context.detach(self._token)
        error = error_type(exc) if exc is not None else ""
        self._record_metrics(ended, error)
        span = self.span
        if span.is_recording():
            self._set_response_attributes(ended)
            if exc is not None:
                span.set_attribute("error.type", error)
                if error != "cancelled":
                    span.set_status(StatusCode.ERROR, str(exc) if isinstance(exc, ApiError) else error)
        span.end()

    # What serving code reports while the call runs.

    def observe(self, step: GenerationStep) -> None:
        """One generation step: the first token's time, output tokens, finish reasons."""
        if self._first_token_at is None:
            self._first_token_at = time.perf_counter()
        tokens = 0
        for sequence in step.sequences:
            tokens += len(sequence.token_ids)
            if sequence.finish_reason is not None:
                self.finish_reasons.append(sequence.finish_reason)
        self.output_tokens = (self.output_tokens or 0) + tokens
        if self.input_tokens is None:
            self.input_tokens = step.prompt_tokens

    def usage(self, *, input_tokens: int | None = None, output_tokens: int | None = None) -> None:
        if input_tokens is not None:
            self.input_tokens = input_tokens
        if output_tokens is not None:
            self.output_tokens = output_tokens

    def produced(self, *, images: int = 0, audio_seconds: float = 0.0, video_frames: int = 0) -> None:
        self.images += images
        self.audio_seconds += audio_seconds
        self.video_frames += video_frames

    def set(self, attributes: dict[str, Any]) -> None:
        """Operation-specific attributes (image size, audio duration, ...), when recording."""
        if self.span.is_recording():
            self.span.set_attributes(attributes)

    # Recording at the end.

    def _record_metrics(self, ended: float, error: str) -> None:
        labels = (self.operation, self.model)
        GENAI_DURATION.labels(self.operation, self.model, error).observe(ended - self._started)
        if self._first_token_at is not None:
            GENAI_TTFT.labels(*labels).observe(self._first_token_at - self._started)
            if self.output_tokens is not None and self.output_tokens > 1:
                GENAI_TPOT.labels(*labels).observe((ended - self._first_token_at) / (self.output_tokens - 1))
        if self.input_tokens:
            TOKENS.labels(self.operation, self.model, "input").inc(self.input_tokens)
        if self.output_tokens:
            TOKENS.labels(self.operation, self.model, "output").inc(self.output_tokens)
        if self.images:
            IMAGES.labels(*labels).inc(self.images)
        if self.audio_seconds:
            AUDIO_SECONDS.labels(*labels).inc(self.audio_seconds)
        if self.video_frames:
            VIDEO_FRAMES.labels(*labels).inc(self.video_frames)

    def _set_response_attributes(self, ended: float) -> None:
        attributes: dict[str, Any] = {"gen_ai.response.model": self.model}
        if self.finish_reasons:
            attributes["gen_ai.response.finish_reasons"] = self.finish_reasons
        if self.input_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = self.input_tokens
        if self.output_tokens is not None:
            attributes["gen_ai.usage.output_tokens"] = self.output_tokens
        if self._first_token_at is not None:
            attributes["gen_ai.server.time_to_first_token"] = self._first_token_at - self._started
        if self.images:
            attributes["omniserve.images.count"] = self.images
        if self.audio_seconds:
            attributes["omniserve.audio.seconds"] = round(self.audio_seconds, 3)
        if self.video_frames:
            attributes["omniserve.video.frames"] = self.video_frames
        self.span.set_attributes(attributes)


# Call sites read as a verb: `async with inference("chat", model) as call`.
inference = Inference


def image_attributes(width: int, height: int, count: int, steps: int, seed: int | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "omniserve.image.width": width,
        "omniserve.image.height": height,
        "gen_ai.request.choice.count": count,
        "omniserve.image.steps": steps,
    }
    if seed is not None:
        attributes["gen_ai.request.seed"] = seed
    return attributes
