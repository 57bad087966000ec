"""Completions: prompt(s) as text or token ids -> the engine -> OpenAI text_completion."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

import msgspec

from engines.base import GenerationStep, SamplingOptions, TextGenerationEngine, TokenLogprobs
from engines.scheduler import Scheduler
from schemas.openai.common import Usage
from schemas.openai.completions import Completion, CompletionChoice, CompletionLogprobs, CompletionRequest
from server.accounts import UNMETERED, Charge, Meter
from server.capabilities.calls import EngineCall, engine_call, resident_engine
from server.capabilities.started_streams import READY, started_stream
from server.capabilities.text.sampling import (
    check_input_ids,
    check_n,
    check_sequences,
    merge_streams,
    new_id,
    resolve_max_tokens,
    sampling_options,
    split_inputs,
    token_ids,
    unix_now,
)
from server.errors import bad_request
from server.settings import Limits
from server.sse import guarded_events, sse_event


class _Prompt(msgspec.Struct, kw_only=True):
    ids: list[int]
    options: SamplingOptions
    echo_text: str = ""


class _LogprobsBuilder:
    """Accumulates OpenAI's legacy logprobs arrays; text offsets run over the whole choice."""

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset
        self.value = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])

    def add(self, entries: list[TokenLogprobs | None], tokens: list[str]) -> None:
        for entry, token in zip(entries, tokens, strict=False):
            self.value.tokens.append(token)
            self.value.text_offset.append(self.offset)
            self.offset += len(token)
            if entry is None:  # the first prompt token has no logprob
                self.value.token_logprobs.append(None)
                self.value.top_logprobs.append(None)
            else:
                self.value.token_logprobs.append(entry.logprob)
                self.value.top_logprobs.append({top.token: top.logprob for top in entry.top})

    def take(self) -> CompletionLogprobs:
        value = self.value
        self.value = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
        return value


class CompletionService:
    def __init__(self, scheduler: Scheduler, limits: Limits) -> None:
        self.scheduler = scheduler
        self.limits = limits

    async def _prompts(self, request: CompletionRequest, engine: TextGenerationEngine) -> list[_Prompt]:
        check_n(request.n, self.limits.max_n)
        if request.suffix is not None:
            raise bad_request("suffix is not supported by this server.", "suffix")
        if request.best_of is not None and request.best_of != request.n:
            raise bad_request("best_of is not supported; use n.", "best_of")
        raw = split_inputs(request.prompt, "prompt", self.limits.max_batch_inputs)
        check_sequences(len(raw), request.n, self.limits.max_sequences_per_request)
        check_input_ids(request.prompt, engine.info.vocab_size, "prompt")
        prompts = []
        for item, ids in zip(raw, await token_ids(engine, raw), strict=True):
            if not ids:
                raise bad_request("A prompt is empty.", "prompt")
            budget = resolve_max_tokens(request.max_tokens, len(ids), engine.info.max_model_len, "max_tokens")
            options = sampling_options(
                request,
                max_tokens=budget,
                logprobs=request.logprobs,
                vocab_size=engine.info.vocab_size,
                adapter=self.scheduler.adapter_name(request.model),
            )
            if request.echo and request.logprobs is not None:
                options.prompt_logprobs = request.logprobs
            echo_text = (item if isinstance(item, str) else engine.detokenize(ids)) if request.echo else ""
            prompts.append(_Prompt(ids=ids, options=options, echo_text=echo_text))
        return prompts

    async def _prepare(self, request: CompletionRequest) -> tuple[TextGenerationEngine, list[_Prompt]]:
        engine = await resident_engine(self.scheduler, request.model, TextGenerationEngine)
        return engine, await self._prompts(request, engine)

    def _run(
        self, engine: TextGenerationEngine, prompts: list[_Prompt], request_id: str
    ) -> AsyncIterator[tuple[int, GenerationStep]]:
        return merge_streams(
            [engine.generate(prompt.ids, prompt.options, f"{request_id}-{i}") for i, prompt in enumerate(prompts)]
        )

    @staticmethod
    def _charge(request: CompletionRequest, prompts: list[_Prompt], meter: Meter) -> Charge:
        outputs = [prompt.options for prompt in prompts for _ in range(request.n)]
        prompt_tokens = sum(len(prompt.ids) for prompt in prompts)
        return meter.tokens(prompt_tokens, outputs, capped=request.max_tokens is not None)

    async def create(self, request: CompletionRequest, meter: Meter = UNMETERED) -> Completion:
        _, prompts = await self._prepare(request)
        charge = self._charge(request, prompts, meter)
        request_id = new_id("cmpl")
        n = request.n
        texts = [prompt.echo_text for prompt in prompts for _ in range(n)]
        logprobs = [_LogprobsBuilder() for _ in texts]
        finish: list[str | None] = [None] * len(texts)
        completion_tokens = 0
        async with self._call(request, prompts, request_id, charge) as (engine, record):
            async for prompt_index, step in self._run(engine, prompts, request_id):
                record.observe(step)
                for seq in step.sequences:
                    charge.add(len(seq.token_ids))
                    choice = prompt_index * n + seq.index
                    if step.prompt_logprobs is not None and request.echo:
                        prompt = prompts[prompt_index]
                        logprobs[choice].add(step.prompt_logprobs, engine.token_strings(prompt.ids))
                    texts[choice] += seq.text
                    completion_tokens += len(seq.token_ids)
                    if seq.logprobs is not None:
                        logprobs[choice].add(list(seq.logprobs), [entry.token for entry in seq.logprobs])
                    if seq.finish_reason is not None:
                        finish[choice] = seq.finish_reason
        prompt_tokens = sum(len(prompt.ids) for prompt in prompts)
        return Completion(
            id=request_id,
            created=unix_now(),
            model=request.model,
            choices=[
                CompletionChoice(
                    index=i,
                    text=texts[i],
                    logprobs=logprobs[i].take() if request.logprobs is not None else None,
                    finish_reason=finish[i],
                )
                for i in range(len(texts))
            ],
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
        )

    def _call(
        self,
        request: CompletionRequest,
        prompts: list[_Prompt],
        request_id: str,
        charge: Charge,
    ) -> EngineCall[TextGenerationEngine]:
        return engine_call(
            self.scheduler,
            request.model,
            TextGenerationEngine,
            "text_completion",
            charge=charge,
            options=prompts[0].options,
            response_id=request_id,
            input_tokens=sum(len(prompt.ids) for prompt in prompts),
            weight=len(prompts) * request.n,
        )

    async def stream(self, request: CompletionRequest, meter: Meter = UNMETERED) -> AsyncIterator[bytes]:
        """SSE bytes once the model admits the request (see `ChatService.stream`)."""
        _, prompts = await self._prepare(request)
        charge = self._charge(request, prompts, meter)
        events = await started_stream(self._stream_events(request, prompts, charge))
        return guarded_events(events)

    async def _stream_events(
        self, request: CompletionRequest, prompts: list[_Prompt], charge: Charge
    ) -> AsyncGenerator[bytes, None]:
        request_id = new_id("cmpl")
        created = unix_now()
        n = request.n
        echoed = [False] * (len(prompts) * n)
        offsets = [_LogprobsBuilder() for _ in echoed]
        completion_tokens = 0

        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> bytes:
            return sse_event(
                Completion(id=request_id, created=created, model=request.model, choices=choices, usage=usage)
            )

        async with self._call(request, prompts, request_id, charge) as (engine, record):
            yield READY
            async for prompt_index, step in self._run(engine, prompts, request_id):
                record.observe(step)
                choices = []
                for seq in step.sequences:
                    choice = prompt_index * n + seq.index
                    text = seq.text
                    builder = offsets[choice]
                    if request.echo and not echoed[choice]:
                        echoed[choice] = True
                        prompt = prompts[prompt_index]
                        text = prompt.echo_text + text
                        if step.prompt_logprobs is not None:
                            builder.add(step.prompt_logprobs, engine.token_strings(prompt.ids))
                    completion_tokens += len(seq.token_ids)
                    charge.add(len(seq.token_ids))
                    if seq.logprobs is not None:
                        builder.add(list(seq.logprobs), [entry.token for entry in seq.logprobs])
                    choices.append(
                        CompletionChoice(
                            index=choice,
                            text=text,
                            logprobs=builder.take() if request.logprobs is not None else None,
                            finish_reason=seq.finish_reason,
                        )
                    )
                yield chunk(choices)
        if request.stream_options and request.stream_options.include_usage:
            prompt_tokens = sum(len(prompt.ids) for prompt in prompts)
            yield chunk(
                [],
                Usage(
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    total_tokens=prompt_tokens + completion_tokens,
                ),
            )
