"""Text generation on vLLM: chat rendering, tokenization, streaming deltas, abort."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from opentelemetry import propagate

from engines.base import (
    GenerationStep,
    MediaPrompt,
    ModelSpec,
    SamplingOptions,
    SequenceDelta,
    TextAdapter,
    TokenChoice,
    TokenLogprobs,
)
from engines.errors import EngineError, EngineFailure, InvalidJob
from engines.llm.adapters import AdapterError, AdapterTable, adapter_rank
from engines.llm.runtime import VllmEngineBase
from engines.workpools import WorkPool, run_in

if TYPE_CHECKING:
    from vllm import SamplingParams

log = logging.getLogger("omniserve.engines.vllm")

# vLLM's own threshold: a temperature below it means greedy decoding.
GREEDY_TEMPERATURE = 1e-5


def greedy_copies(options: SamplingOptions) -> int:
    """How many times one computed sequence is repeated to answer ``options``: greedy
    decoding is deterministic, so n greedy choices are one sequence n times. vLLM refuses
    n > 1 when greedy; OpenAI answers n identical choices, and so does this engine."""
    greedy = options.temperature is not None and options.temperature < GREEDY_TEMPERATURE
    return options.n if greedy and options.n > 1 else 1


def to_sampling_params(options: SamplingOptions) -> SamplingParams:
    from vllm import SamplingParams
    from vllm.exceptions import VLLMClientError
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    structured = None
    if options.json_schema is not None:
        structured = StructuredOutputsParams(json=options.json_schema, disable_any_whitespace=options.compact_json)
    elif options.json_object:
        structured = StructuredOutputsParams(json_object=True)
    elif options.regex is not None:
        structured = StructuredOutputsParams(regex=options.regex)
    elif options.choice is not None:
        structured = StructuredOutputsParams(choice=options.choice)
    elif options.grammar is not None:
        structured = StructuredOutputsParams(grammar=options.grammar)
    kwargs: dict[str, Any] = {
        "n": 1 if greedy_copies(options) > 1 else options.n,
        "max_tokens": options.max_tokens,
        "seed": options.seed,
        "stop": options.stop or None,
        "stop_token_ids": options.stop_token_ids or None,
        "logit_bias": options.logit_bias,
        "logprobs": options.logprobs,
        "prompt_logprobs": options.prompt_logprobs,
        "min_tokens": options.min_tokens,
        "ignore_eos": options.ignore_eos,
        "skip_special_tokens": options.skip_special_tokens,
        "include_stop_str_in_output": options.include_stop_str_in_output,
        "structured_outputs": structured,
        # Deltas: each step carries only new tokens, so nothing is re-sent or re-diffed.
        "output_kind": RequestOutputKind.DELTA,
    }
    # Unset knobs keep vLLM's defaults (which already follow the model's generation config).
    for name in (
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
    ):
        value = getattr(options, name)
        if value is not None:
            kwargs[name] = value
    try:
        return SamplingParams(**kwargs)
    except (ValueError, VLLMClientError) as exc:
        # vLLM's validation errors are not ValueErrors: both are the request's fault.
        raise InvalidJob(str(exc), getattr(exc, "parameter", None)) from exc


def _position_logprobs(chosen: int, entries: dict[int, Any], top_n: int) -> TokenLogprobs:
    chosen_entry = entries.get(chosen)
    ranked = sorted(entries.items(), key=lambda item: item[1].rank or 0)
    top = [
        TokenChoice(token=entry.decoded_token or "", logprob=entry.logprob, token_id=token)
        for token, entry in ranked[:top_n]
    ]
    return TokenLogprobs(
        token=(chosen_entry.decoded_token or "") if chosen_entry else "",
        logprob=chosen_entry.logprob if chosen_entry else float("-inf"),
        top=top,
        token_id=chosen,
        rank=chosen_entry.rank if chosen_entry else None,
    )


class VllmTextEngine(VllmEngineBase):
    """Implements ``TextGenerationEngine`` on a vLLM AsyncLLM."""

    def __init__(self, spec: ModelSpec, *, cpu_threads: int = 0) -> None:
        super().__init__(spec, cpu_threads=cpu_threads)
        self.aborted_requests = 0
        try:
            self._adapters = AdapterTable(spec)
        except AdapterError as exc:
            from engines.registry import CatalogError

            raise CatalogError(f"model {spec.name}: loras: {exc}") from None

    def _engine_kind_options(self) -> dict[str, Any]:
        return self._adapters.engine_options()

    def adapters(self) -> list[TextAdapter]:
        return self._adapters.list()

    async def add_adapter(self, adapter: TextAdapter) -> None:
        try:
            rank = await run_in(WorkPool.STORAGE, adapter_rank, adapter.path)
        except AdapterError as exc:
            raise InvalidJob(f"The adapter cannot be used: {exc}.", "path") from None
        request = self._adapters.add(adapter, rank)
        if self._llm is None:
            return  # vLLM reads it with the first request that names it
        # Loaded now, so that a broken adapter is refused here rather than by a later request.
        try:
            await self._llm.add_lora(request)
        except Exception as exc:
            self._adapters.remove(adapter.name)
            raise InvalidJob(f"vLLM refused the adapter: {exc}", "path") from None

    def remove_adapter(self, name: str) -> None:
        # vLLM keeps no request for it past this point; its weights leave vLLM's adapter cache
        # as other adapters displace them (requests already running finish with it).
        self._adapters.remove(name)

    async def load(self) -> None:
        await self._start()
        reasoning = self.reasoning_parser()
        if reasoning is not None:
            try:
                reasoning.check()
            except Exception:
                await self.unload()
                raise
        # One token end to end, so that "ready" means the first real request is fast.
        warmup = SamplingOptions(max_tokens=1)
        async for _ in self.generate(self.tokenize("warm up"), warmup, f"warmup-{self.spec.name}"):
            pass

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        template_kwargs: dict[str, Any] | None = None,
    ) -> list[int]:
        try:
            text = self.tokenizer.apply_chat_template(
                messages,
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                tokenize=False,
                **(template_kwargs or {}),
            )
        except Exception as exc:  # jinja errors: the template rejected these messages
            raise InvalidJob(f"The model's chat template cannot render these messages: {exc}", "messages") from exc
        # The template already placed every special token it wants.
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(token_ids)))

    def token_strings(self, token_ids: Sequence[int]) -> list[str]:
        return [self.tokenizer.decode([token]) for token in token_ids]

    def tool_parser(self) -> Any | None:
        if self.spec.tool_parser is None:
            return None
        from engines.llm.tools import ToolCallParser

        return ToolCallParser(self.spec.tool_parser, self.tokenizer)

    def reasoning_parser(self) -> Any | None:
        if self.spec.reasoning_parser is None:
            return None
        from engines.llm.reasoning import ReasoningParser

        return ReasoningParser(self.spec.reasoning_parser, self.tokenizer)

    async def attach_images(self, prompt_token_ids: list[int], images: list[Any]) -> MediaPrompt:
        """vLLM's own multimodal processing (the model's HF processor, as its OpenAI server runs
        it): each image placeholder in the ids becomes the image's tokens, and the pixels become
        the tensors the vision tower takes. Runs before generation so that the prompt's true
        length is known for max_tokens, metering and usage."""
        from vllm.exceptions import VLLMClientError

        prompt = {"prompt_token_ids": prompt_token_ids, "multi_modal_data": {"image": images}}
        try:
            (engine_input,) = await self.llm.renderer.render_cmpl_async([prompt])
        except (ValueError, VLLMClientError) as exc:  # placeholders and images that do not match
            raise InvalidJob(f"The images cannot be placed in this prompt: {exc}", "messages") from exc
        return MediaPrompt(token_ids=list(engine_input["prompt_token_ids"]), engine_input=engine_input)

    async def generate(
        self, prompt_token_ids: list[int], options: SamplingOptions, request_id: str, *, media: Any = None
    ) -> AsyncIterator[GenerationStep]:
        from vllm.exceptions import VLLMClientError
        from vllm.inputs.engine import tokens_input

        params = to_sampling_params(options)
        lora_request = self._adapters.request(options.adapter) if options.adapter is not None else None
        copies = greedy_copies(options)
        # The caller's span context (traceparent), so vLLM's own spans join the request's trace.
        # Only when its OTLP tracing is on (otlp_traces_endpoint in the model's options): vLLM
        # logs a warning for every request that brings trace headers to it otherwise.
        trace_headers: dict[str, str] = {}
        if self.spec.options.get("otlp_traces_endpoint"):
            propagate.inject(trace_headers)
        first = True
        finished = False
        try:
            prompt = media.engine_input if isinstance(media, MediaPrompt) else tokens_input(prompt_token_ids)
            async for output in self.llm.generate(
                prompt,
                params,
                request_id,
                lora_request=lora_request,
                trace_headers=trace_headers or None,
            ):
                sequences = [self._delta(seq, options.logprobs) for seq in output.outputs]
                if copies > 1 and sequences:
                    sequences = [msgspec.structs.replace(sequences[0], index=i) for i in range(copies)]
                step = GenerationStep(prompt_tokens=len(prompt_token_ids), sequences=sequences)
                if first and options.prompt_logprobs is not None and output.prompt_logprobs is not None:
                    step.prompt_logprobs = [
                        None if entries is None else _position_logprobs(token, entries, options.prompt_logprobs)
                        for token, entries in zip(prompt_token_ids, output.prompt_logprobs, strict=False)
                    ]
                first = False
                finished = output.finished
                yield step
        except VLLMClientError as exc:
            raise InvalidJob(str(exc)) from exc
        except EngineError:
            raise
        except Exception as exc:
            if isinstance(exc, GeneratorExit):
                raise
            log.exception("generation failed for %s", self.spec.name)
            raise EngineFailure(self.spec.name) from exc
        finally:
            if not finished:
                # Cancelled (client gone) or closed early: free the sequence slots now.
                self.aborted_requests += 1
                await self.abort(request_id)

    @staticmethod
    def _delta(seq: Any, top_logprobs: int | None) -> SequenceDelta:
        logprobs = None
        if top_logprobs is not None and seq.logprobs is not None:
            logprobs = [
                _position_logprobs(token, entries, top_logprobs)
                for token, entries in zip(seq.token_ids, seq.logprobs, strict=False)
            ]
        return SequenceDelta(
            index=seq.index,
            text=seq.text,
            token_ids=list(seq.token_ids),
            logprobs=logprobs,
            finish_reason=seq.finish_reason,
            # vLLM's stop_reason: the stop string, or the stop token id (not reported).
            stop_string=seq.stop_reason if isinstance(seq.stop_reason, str) else None,
        )
