"""Chat completions: messages -> the model's chat template -> the engine -> OpenAI shapes."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import msgspec

from engines.base import GenerationStep, SamplingOptions, TextGenerationEngine, TokenLogprobs
from engines.llm.tools import calls_from_forced_output, forced_tool_schema
from engines.scheduler import Scheduler
from schemas.openai.chat import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    DeltaFunctionCall,
    DeltaToolCall,
    FunctionCall,
    ToolCall,
)
from schemas.openai.common import Usage
from server.accounts import UNMETERED, Charge, Meter
from server.capabilities.calls import EngineCall, engine_call, resident_engine
from server.capabilities.started_streams import READY, started_stream
from server.capabilities.text.chat_images import ChatImages
from server.capabilities.text.chat_shapes import (
    echo_text,
    message_to_template,
    to_openai_logprobs,
    tool_calls_reason,
)
from server.capabilities.text.sampling import (
    check_n,
    check_sequences,
    check_stream_options,
    new_id,
    resolve_max_tokens,
    sampling_options,
    truncate_prompt,
    unix_now,
)
from server.capabilities.text.structured import has_constraint
from server.capabilities.text.templates import (
    ChatTemplateInput,
    TemplateRenderer,
    generation_prompt,
    template_input,
)
from server.capabilities.text.token_output import prompt_logprobs_out
from server.errors import bad_request
from server.settings import Limits
from server.sse import guarded_events, sse_event


class _ChatPlan(msgspec.Struct, kw_only=True):
    """Everything decided before the engine runs."""

    request_id: str
    model: str
    prompt_ids: list[int]
    options: SamplingOptions
    tool_mode: str  # "none" | "forced" | "parsed"
    tool_choice: Any = None
    parser_session: Any = None
    echo_text: str = ""  # what each choice's content starts with (echo)
    # One reasoning session per choice, when the model has a reasoning parser.
    reasoning: list[Any] = []
    media: Any = None  # the engine's prepared prompt, when it has images


class ChatService:
    def __init__(
        self,
        scheduler: Scheduler,
        limits: Limits,
        templates: TemplateRenderer | None = None,
        images: ChatImages | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.limits = limits
        self.templates = templates or TemplateRenderer(limits)
        self.images = images or ChatImages(limits, None)

    async def _plan(
        self, request: ChatCompletionRequest, engine: TextGenerationEngine, template: ChatTemplateInput
    ) -> _ChatPlan:
        check_n(request.n, self.limits.max_n)
        check_stream_options(request)
        check_sequences(1, request.n, self.limits.max_sequences_per_request, "messages")
        if not request.messages:
            raise bad_request("messages must hold at least one message.", "messages")
        # Tools travel as plain dicts (to the template and to vLLM's parsers); most
        # requests have none, so the conversion is skipped for them.
        request_dict = cast(dict[str, Any], msgspec.to_builtins(request)) if request.tools else {}
        tools = request_dict.get("tools")
        tool_choice = request_dict.get("tool_choice")
        if tools and tool_choice is None:
            tool_choice = "auto"
        messages, images = await self.images.template_messages(
            request.messages, engine, request.model, message_to_template
        )
        add_generation_prompt = generation_prompt(request.add_generation_prompt, request.continue_final_message)
        prompt_ids = await self.templates.render(
            engine,
            messages,
            template,
            tools=tools if tools else None,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=request.continue_final_message,
        )
        prompt_ids = truncate_prompt(prompt_ids, request.truncate_prompt_tokens, engine.info.max_model_len)
        if not prompt_ids:
            raise bad_request("truncate_prompt_tokens leaves no prompt.", "truncate_prompt_tokens")
        media = None
        if images:  # the placeholders widened to the images' tokens: the prompt's true length
            media = await engine.attach_images(prompt_ids, images)
            prompt_ids = media.token_ids
        max_tokens = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
        budget = resolve_max_tokens(
            max_tokens,
            len(prompt_ids),
            engine.info.max_model_len,
            "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens",
        )
        top_logprobs = (request.top_logprobs or 0) if request.logprobs else None
        if request.top_logprobs and not request.logprobs:
            raise bad_request("top_logprobs requires logprobs to be true.", "top_logprobs")
        options = sampling_options(
            request,
            max_tokens=budget,
            logprobs=top_logprobs,
            vocab_size=engine.info.vocab_size,
            adapter=self.scheduler.adapter_name(request.model),
        )
        fmt = request.response_format
        if fmt is not None and fmt.type != "text" and has_constraint(options):
            raise bad_request("Give response_format or a structured output constraint, not both.", "response_format")
        if fmt is not None and fmt.type == "json_object":
            options.json_object = True
        elif fmt is not None and fmt.type == "json_schema":
            if fmt.json_schema is None or fmt.json_schema.schema is None:
                raise bad_request("response_format json_schema needs json_schema.schema.", "response_format")
            options.json_schema = fmt.json_schema.schema
        plan = _ChatPlan(
            request_id=new_id("chatcmpl"),
            model=request.model,
            prompt_ids=prompt_ids,
            options=options,
            tool_mode="none",
            tool_choice=tool_choice,
            echo_text=echo_text(request.echo, messages[-1], add_generation_prompt),
            media=media,
        )
        reasoning = engine.reasoning_parser()
        if reasoning is not None:
            reasoning_request = request_dict or cast(dict[str, Any], msgspec.to_builtins(request))
            plan.reasoning = [reasoning.start(reasoning_request, prompt_ids) for _ in range(request.n)]
        if not tools or tool_choice == "none":
            return plan
        schema = forced_tool_schema(tools, tool_choice, request.parallel_tool_calls)
        if schema is not None:
            options.json_schema, options.json_object, options.compact_json = schema, False, True
            plan.tool_mode = "forced"
            plan.reasoning = []  # the schema holds the whole output: no room for reasoning
            return plan
        parser = engine.tool_parser()
        if parser is None:
            raise bad_request(
                f"The model '{request.model}' has no tool-call parser configured, so tool_choice 'auto' is "
                "unavailable; name a function in tool_choice, or use 'required' or 'none'.",
                "tool_choice",
            )
        plan.parser_session = parser.start(request_dict)
        options.skip_special_tokens = plan.parser_session.skip_special_tokens
        plan.tool_mode = "parsed"
        return plan

    async def _prepare(self, request: ChatCompletionRequest) -> tuple[TextGenerationEngine, _ChatPlan]:
        template = template_input(request, self.limits)  # refused before any model loads
        engine = await resident_engine(self.scheduler, request.model, TextGenerationEngine)
        return engine, await self._plan(request, engine, template)

    def _charge(self, request: ChatCompletionRequest, plan: _ChatPlan, meter: Meter) -> Charge:
        capped = request.max_tokens is not None or request.max_completion_tokens is not None
        return meter.tokens(len(plan.prompt_ids), [plan.options] * request.n, capped=capped)

    async def create(self, request: ChatCompletionRequest, meter: Meter = UNMETERED) -> ChatCompletion:
        _, plan = await self._prepare(request)
        charge = self._charge(request, plan, meter)
        texts = [""] * request.n
        token_counts = [0] * request.n
        logprobs: list[list[TokenLogprobs]] = [[] for _ in range(request.n)]
        finish: list[str | None] = [None] * request.n
        output_ids: list[list[int]] = [[] for _ in range(request.n)]
        prompt_logprobs = None
        call = self._call(request, plan, charge)
        async with call as (engine, record):
            async for step in engine.generate(plan.prompt_ids, plan.options, plan.request_id, media=plan.media):
                record.observe(step)
                if step.prompt_logprobs is not None and request.prompt_logprobs is not None:
                    prompt_logprobs = prompt_logprobs_out(step.prompt_logprobs, request.prompt_logprobs)
                for seq in step.sequences:
                    charge.add(len(seq.token_ids))
                    output_ids[seq.index].extend(seq.token_ids)
                    texts[seq.index] += seq.text
                    token_counts[seq.index] += len(seq.token_ids)
                    if seq.logprobs:
                        logprobs[seq.index].extend(seq.logprobs)
                    if seq.finish_reason is not None:
                        finish[seq.index] = seq.finish_reason
        choices = []
        for index in range(request.n):
            message, reason = self._final_message(plan, index, texts[index], finish[index])
            if plan.echo_text:
                message.content = plan.echo_text + (message.content or "")
            choices.append(
                ChatChoice(
                    index=index,
                    message=message,
                    logprobs=(
                        to_openai_logprobs(logprobs[index], bool(request.return_tokens_as_token_ids))
                        if plan.options.logprobs is not None
                        else None
                    ),
                    finish_reason=reason,
                    token_ids=output_ids[index] if request.return_token_ids else None,
                )
            )
        prompt_tokens = len(plan.prompt_ids)
        completion_tokens = sum(token_counts)
        return ChatCompletion(
            id=plan.request_id,
            created=unix_now(),
            model=request.model,
            choices=choices,
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
            prompt_token_ids=plan.prompt_ids if request.return_token_ids else None,
            prompt_logprobs=prompt_logprobs,
        )

    def _final_message(
        self, plan: _ChatPlan, index: int, text: str, reason: str | None
    ) -> tuple[AssistantMessage, str | None]:
        calls: list[tuple[str, str]] = []
        reasoning: str | msgspec.UnsetType | None = msgspec.UNSET
        if plan.reasoning:
            # Reasoning first: a tool-call parser reads only the answer after it.
            reasoning, answer = plan.reasoning[index].extract(text)
            if answer is None:
                return AssistantMessage(content=None, reasoning_content=reasoning), reason
            text = answer
        content: str | None = text
        if plan.tool_mode == "forced":
            calls, content = calls_from_forced_output(text, plan.tool_choice), None
        elif plan.tool_mode == "parsed":
            content, calls = plan.parser_session.extract(text)
        if not calls:
            content = content if content is not None else text
            return AssistantMessage(content=content, reasoning_content=reasoning), reason
        tool_calls = [
            ToolCall(id=new_id("call"), function=FunctionCall(name=name, arguments=arguments))
            for name, arguments in calls
        ]
        return AssistantMessage(
            content=content or None, reasoning_content=reasoning, tool_calls=tool_calls
        ), tool_calls_reason(reason)

    def _call(
        self,
        request: ChatCompletionRequest,
        plan: _ChatPlan,
        charge: Charge,
    ) -> EngineCall[TextGenerationEngine]:
        return engine_call(
            self.scheduler,
            request.model,
            TextGenerationEngine,
            "chat",
            charge=charge,
            options=plan.options,
            response_id=plan.request_id,
            weight=request.n,
        )

    async def stream(self, request: ChatCompletionRequest, meter: Meter = UNMETERED) -> AsyncIterator[bytes]:
        """SSE bytes, once the model admits the request. Errors found before the first byte,
        admission included, raise (a normal error response, with Retry-After when the model is
        busy); errors after it go out as a final ``data:`` event."""
        _, plan = await self._prepare(request)
        charge = self._charge(request, plan, meter)
        # The lease is had before the first byte (see started_stream).
        events = await started_stream(self._stream_events(request, plan, charge))
        return guarded_events(events)

    async def _stream_events(
        self, request: ChatCompletionRequest, plan: _ChatPlan, charge: Charge
    ) -> AsyncGenerator[bytes, None]:
        options = request.stream_options
        include_usage = bool(options and options.include_usage)
        # vLLM's continuous_usage_stats: every chunk carries the usage so far (its choice's
        # tokens), when usage is asked for at all.
        continuous = include_usage and bool(options and options.continuous_usage_stats)
        created = unix_now()
        prompt_tokens = len(plan.prompt_ids)

        def usage(completion_tokens: int) -> Usage:
            return Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            )

        def chunk(choice: ChatChunkChoice | None, choice_tokens: int = 0, first: bool = False) -> bytes:
            # One choice per chunk, as OpenAI streams n > 1; the last chunk has none, and usage.
            choices = [choice] if choice is not None else []
            return sse_event(
                ChatCompletionChunk(
                    id=plan.request_id,
                    created=created,
                    model=request.model,
                    choices=choices,
                    usage=usage(choice_tokens) if continuous and choice is not None else None,
                    prompt_token_ids=plan.prompt_ids if first and request.return_token_ids else None,
                )
            )

        tokens = [0] * request.n
        called_tools = [False] * request.n
        forced_text = [""] * request.n
        async with self._call(request, plan, charge) as (engine, record):
            yield READY
            for index in range(request.n):
                yield chunk(ChatChunkChoice(index=index, delta=ChatDelta(role="assistant", content="")), first=True)
            if plan.echo_text:
                for index in range(request.n):
                    yield chunk(ChatChunkChoice(index=index, delta=ChatDelta(content=plan.echo_text)))
            step: GenerationStep
            async for step in engine.generate(plan.prompt_ids, plan.options, plan.request_id, media=plan.media):
                record.observe(step)
                for seq in step.sequences:
                    tokens[seq.index] += len(seq.token_ids)
                    charge.add(len(seq.token_ids))
                    reason = seq.finish_reason
                    reasoning, text, token_ids = None, seq.text, seq.token_ids
                    if plan.reasoning:
                        split = plan.reasoning[seq.index].split_delta(text, token_ids, finished=reason is not None)
                        reasoning, text, token_ids = split.reasoning, split.content, split.content_ids
                    delta = None
                    if text or not plan.reasoning:
                        delta = self._stream_delta(plan, seq.index, text, token_ids, forced_text, called_tools)
                    if reasoning:
                        delta = delta or ChatDelta()
                        delta.reasoning_content = reasoning
                    if reason is not None:
                        if plan.tool_mode == "forced" and plan.tool_choice == "required":
                            delta = self._required_calls_delta(forced_text[seq.index], plan, called_tools, seq.index)
                        if called_tools[seq.index]:
                            reason = tool_calls_reason(reason)
                    if delta is None and reason is None and not (request.return_token_ids and seq.token_ids):
                        continue
                    as_ids = bool(request.return_tokens_as_token_ids)
                    logprobs = to_openai_logprobs(seq.logprobs, as_ids) if seq.logprobs is not None else None
                    choice = ChatChunkChoice(
                        index=seq.index,
                        delta=delta or ChatDelta(),
                        logprobs=logprobs,
                        finish_reason=reason,
                        token_ids=seq.token_ids if request.return_token_ids else None,
                    )
                    yield chunk(choice, tokens[seq.index])
            if include_usage:
                yield sse_event(
                    ChatCompletionChunk(
                        id=plan.request_id, created=created, model=request.model, choices=[], usage=usage(sum(tokens))
                    )
                )

    def _stream_delta(
        self, plan: _ChatPlan, index: int, text: str, token_ids: list[int], forced_text: list[str], called: list[bool]
    ) -> ChatDelta | None:
        if plan.tool_mode == "none":
            return ChatDelta(content=text) if text else None
        if plan.tool_mode == "forced":
            if plan.tool_choice == "required":
                forced_text[index] += text  # emitted whole once complete
                return None
            # Named function: the generated text is the arguments object itself.
            first = not called[index]
            called[index] = True
            function = DeltaFunctionCall(name=plan.tool_choice["function"]["name"] if first else None, arguments=text)
            call = DeltaToolCall(
                index=0, id=new_id("call") if first else None, type="function" if first else None, function=function
            )
            return ChatDelta(tool_calls=[call])
        parsed = plan.parser_session.extract_delta(text, token_ids)
        if parsed is None:
            return None
        delta = msgspec.convert(parsed, ChatDelta)
        if delta.tool_calls:
            called[index] = True
        return delta

    @staticmethod
    def _required_calls_delta(text: str, plan: _ChatPlan, called: list[bool], index: int) -> ChatDelta | None:
        calls = calls_from_forced_output(text, plan.tool_choice)
        if not calls:
            return None
        called[index] = True
        return ChatDelta(
            tool_calls=[
                DeltaToolCall(
                    index=i,
                    id=new_id("call"),
                    type="function",
                    function=DeltaFunctionCall(name=name, arguments=arguments),
                )
                for i, (name, arguments) in enumerate(calls)
            ]
        )
