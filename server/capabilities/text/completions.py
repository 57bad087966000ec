"""Completions: prompt(s) as text or token ids -> the engine -> OpenAI text_completion."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import msgspec

from engines.base import GenerationStep, SamplingOptions, TextGenerationEngine, TokenLogprobs
from engines.scheduler import Scheduler
from schemas.openai.common import PromptLogprobs, Usage
from schemas.openai.completions import Completion, CompletionChoice, CompletionLogprobs, CompletionRequest
from server.accounts import UNMETERED, Charge, Meter
from server.capabilities.calls import EngineCall, engine_call, resident_engine
from server.capabilities.started_streams import READY, started_stream
from server.capabilities.text.sampling import (
    check_input_ids,
    check_n,
    check_sequences,
    check_stream_options,
    merge_streams,
    new_id,
    resolve_max_tokens,
    sampling_options,
    split_inputs,
    token_ids,
    truncate_prompt,
    unix_now,
)
from server.capabilities.text.token_output import as_token_ids, id_label, prompt_logprobs_out
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

    def add(self, entries: Sequence[TokenLogprobs | None], tokens: list[str], top_n: int | None = None) -> None:
        """``tokens``: how each position's token is written; ``top_n``: at most this many
        alternatives (the engine may have computed more, for prompt_logprobs)."""
        for entry, token in zip(entries, tokens, strict=False):
            self.value.tokens.append(token)
            self.value.text_offset.append(self.offset)
            self.offset += len(token)
            if entry is None:  # the first prompt token has no logprob
                self.value.token_logprobs.append(None)
                self.value.top_logprobs.append(None)
            else:
                self.value.token_logprobs.append(entry.logprob)
                # OpenAI lists the sampled token among the alternatives too: up to logprobs + 1.
                alternatives = {top.token: top.logprob for top in entry.top[:top_n]}
                alternatives.setdefault(token, entry.logprob)
                self.value.top_logprobs.append(alternatives)

    def take(self) -> CompletionLogprobs:
        value = self.value
        self.value = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
        return value


def prompt_tokens_written(engine: TextGenerationEngine, ids: list[int], as_ids: bool) -> list[str]:
    """How the logprobs arrays write an echoed prompt's tokens: as text, or as "token_id:N"
    (return_tokens_as_token_ids)."""
    return [id_label(token) for token in ids] if as_ids else engine.token_strings(ids)


class CompletionService:
    def __init__(self, scheduler: Scheduler, limits: Limits) -> None:
        self.scheduler = scheduler
        self.limits = limits

    async def _prompts(self, request: CompletionRequest, engine: TextGenerationEngine) -> list[_Prompt]:
        check_n(request.n, self.limits.max_n)
        check_stream_options(request)
        if request.suffix is not None:
            raise bad_request("suffix is not supported by this server.", "suffix")
        if request.best_of is not None and request.best_of != request.n:
            raise bad_request("best_of is not supported; use n.", "best_of")
        raw = split_inputs(request.prompt, "prompt", self.limits.max_batch_inputs)
        check_sequences(len(raw), request.n, self.limits.max_sequences_per_request)
        check_input_ids(request.prompt, engine.info.vocab_size, "prompt")
        prompts = []
        for item, tokens in zip(raw, await token_ids(engine, raw), strict=True):
            ids = truncate_prompt(tokens, request.truncate_prompt_tokens, engine.info.max_model_len)
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
                options.prompt_logprobs = max(options.prompt_logprobs or 0, request.logprobs)
            echo_text = ""
            if request.echo:
                echo_text = item if isinstance(item, str) and len(ids) == len(tokens) else engine.detokenize(ids)
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
        output_ids: list[list[int]] = [[] for _ in texts]
        prompt_logprobs: list[PromptLogprobs | None] = [None] * len(prompts)
        as_ids = bool(request.return_tokens_as_token_ids)
        completion_tokens = 0
        async with self._call(request, prompts, request_id, charge) as (engine, record):
            async for prompt_index, step in self._run(engine, prompts, request_id):
                record.observe(step)
                prompt = prompts[prompt_index]
                if step.prompt_logprobs is not None and request.prompt_logprobs is not None:
                    prompt_logprobs[prompt_index] = prompt_logprobs_out(step.prompt_logprobs, request.prompt_logprobs)
                for seq in step.sequences:
                    charge.add(len(seq.token_ids))
                    choice = prompt_index * n + seq.index
                    if step.prompt_logprobs is not None and request.echo and request.logprobs is not None:
                        logprobs[choice].add(
                            step.prompt_logprobs, prompt_tokens_written(engine, prompt.ids, as_ids), request.logprobs
                        )
                    texts[choice] += seq.text
                    output_ids[choice].extend(seq.token_ids)
                    completion_tokens += len(seq.token_ids)
                    if seq.logprobs is not None:
                        entries = as_token_ids(seq.logprobs) if as_ids else list(seq.logprobs)
                        logprobs[choice].add(entries, [entry.token for entry in entries])
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
                    prompt_logprobs=prompt_logprobs[i // n],
                    prompt_token_ids=prompts[i // n].ids if request.return_token_ids else None,
                    token_ids=output_ids[i] if request.return_token_ids else None,
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
        echoed = [False] * (len(prompts) * n)  # whether a choice has had its first chunk
        as_ids = bool(request.return_tokens_as_token_ids)
        offsets = [_LogprobsBuilder() for _ in echoed]
        tokens = [0] * len(echoed)
        stream_options = request.stream_options
        include_usage = bool(stream_options and stream_options.include_usage)
        # vLLM's continuous_usage_stats: each chunk carries its choice's usage so far.
        continuous = include_usage and bool(stream_options and stream_options.continuous_usage_stats)

        def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
            return Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            )

        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> bytes:
            return sse_event(
                Completion(id=request_id, created=created, model=request.model, choices=choices, usage=usage)
            )

        async with self._call(request, prompts, request_id, charge) as (engine, record):
            yield READY
            async for prompt_index, step in self._run(engine, prompts, request_id):
                record.observe(step)
                prompt = prompts[prompt_index]
                for seq in step.sequences:
                    choice = prompt_index * n + seq.index
                    text = seq.text
                    builder = offsets[choice]
                    first = not echoed[choice]
                    echoed[choice] = True
                    if request.echo and first:
                        text = prompt.echo_text + text
                        if step.prompt_logprobs is not None and request.logprobs is not None:
                            written = prompt_tokens_written(engine, prompt.ids, as_ids)
                            builder.add(step.prompt_logprobs, written, request.logprobs)
                    tokens[choice] += len(seq.token_ids)
                    charge.add(len(seq.token_ids))
                    if seq.logprobs is not None:
                        entries = as_token_ids(seq.logprobs) if as_ids else list(seq.logprobs)
                        builder.add(entries, [entry.token for entry in entries])
                    # One choice per chunk, as OpenAI streams n > 1 (and several prompts).
                    completion = CompletionChoice(
                        index=choice,
                        text=text,
                        logprobs=builder.take() if request.logprobs is not None else None,
                        finish_reason=seq.finish_reason,
                        prompt_token_ids=prompt.ids if first and request.return_token_ids else None,
                        token_ids=seq.token_ids if request.return_token_ids else None,
                    )
                    yield chunk([completion], usage(len(prompt.ids), tokens[choice]) if continuous else None)
        if include_usage:
            yield chunk([], usage(sum(len(prompt.ids) for prompt in prompts), sum(tokens)))
