"""One chat turn, reported in pieces no API family owns, for the adapters of other families.

Anthropic's Messages API is the same capability as chat completions: the same template, tool
handling (forced calls through structured output, free calls through the model's parser),
context checks, charge, GenAI record and lease. `ChatTurns` is the chat service with two more
ways to run a prepared request, one choice each: whole (`complete`) or as deltas (`deltas`),
which an adapter turns into its own shapes. The OpenAI route keeps its own generation loop,
which builds OpenAI's chunks directly.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any, cast

import msgspec

from engines.base import TextGenerationEngine
from schemas.openai.chat import ChatCompletionRequest, ChatDelta, ToolCall
from server.accounts import UNMETERED, Charge, Meter
from server.capabilities.calls import resident_engine
from server.capabilities.text.chat import ChatService, _ChatPlan, message_to_template
from server.capabilities.text.templates import ChatTemplateInput


class ChatTurn(msgspec.Struct, kw_only=True):
    """A request checked, rendered and charged at its worst case, not yet admitted."""

    request: ChatCompletionRequest
    plan: _ChatPlan
    charge: Charge
    prompt_tokens: int


class TurnResult(msgspec.Struct, kw_only=True):
    text: str | None
    tool_calls: list[ToolCall]
    # The engine's reason ("stop", "length"), not "tool_calls": the adapter weighs both.
    finish_reason: str | None
    stop_string: str | None
    prompt_tokens: int
    completion_tokens: int


class TurnDelta(msgspec.Struct, kw_only=True):
    """What one engine step added. The first delta of a turn is empty and says only that the
    request was admitted (the lease is held): an adapter's stream can start there."""

    delta: ChatDelta | None = None
    finish_reason: str | None = None
    stop_string: str | None = None
    completion_tokens: int = 0


def request_tools(request: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    """The tools as the template and the parsers take them: plain dicts."""
    if not request.tools:
        return None
    return cast(list[dict[str, Any]], msgspec.to_builtins(request.tools))


class ChatTurns(ChatService):
    async def start(self, request: ChatCompletionRequest, meter: Meter = UNMETERED) -> ChatTurn:
        """Checked, rendered and charged; raises what refuses the request (before any stream)."""
        if request.n != 1:
            raise ValueError("a chat turn has one choice")
        _, plan = await self._prepare(request)
        charge = self._charge(request, plan, meter)
        return ChatTurn(request=request, plan=plan, charge=charge, prompt_tokens=len(plan.prompt_ids))

    async def count_prompt_tokens(self, request: ChatCompletionRequest) -> int:
        """The tokens the request's messages and tools take in the model's template."""
        engine = await resident_engine(self.scheduler, request.model, TextGenerationEngine)
        prompt = await self.templates.render(
            engine,
            [message_to_template(message) for message in request.messages],
            ChatTemplateInput(None, client_template=False),
            tools=request_tools(request),
            add_generation_prompt=True,
        )
        return len(prompt)

    async def complete(self, turn: ChatTurn) -> TurnResult:
        plan, charge = turn.plan, turn.charge
        text = ""
        tokens = 0
        finish: str | None = None
        stop_string: str | None = None
        async with self._call(turn.request, plan, charge) as (engine, record):
            async for step in engine.generate(plan.prompt_ids, plan.options, plan.request_id):
                record.observe(step)
                for seq in step.sequences:
                    charge.add(len(seq.token_ids))
                    text += seq.text
                    tokens += len(seq.token_ids)
                    if seq.finish_reason is not None:
                        finish, stop_string = seq.finish_reason, seq.stop_string
        message, _ = self._final_message(plan, 0, text, finish)
        return TurnResult(
            text=message.content,
            tool_calls=message.tool_calls or [],
            finish_reason=finish,
            stop_string=stop_string,
            prompt_tokens=turn.prompt_tokens,
            completion_tokens=tokens,
        )

    async def deltas(self, turn: ChatTurn) -> AsyncGenerator[TurnDelta, None]:
        """The turn's deltas; the first (empty) once admitted. Run it under `started_stream`
        (through the adapter's own generator) so that admission happens before the status."""
        plan, charge = turn.plan, turn.charge
        called = [False]
        forced_text = [""]
        tokens = 0
        async with self._call(turn.request, plan, charge) as (engine, record):
            yield TurnDelta()
            async for step in engine.generate(plan.prompt_ids, plan.options, plan.request_id):
                record.observe(step)
                for seq in step.sequences:
                    tokens += len(seq.token_ids)
                    charge.add(len(seq.token_ids))
                    delta = self._stream_delta(plan, 0, seq.text, seq.token_ids, forced_text, called)
                    if seq.finish_reason is not None and plan.tool_mode == "forced" and plan.tool_choice == "required":
                        # Calls demanded by "required" are one JSON array: emitted once whole.
                        delta = self._required_calls_delta(forced_text[0], plan, called, 0)
                    yield TurnDelta(
                        delta=delta,
                        finish_reason=seq.finish_reason,
                        stop_string=seq.stop_string,
                        completion_tokens=tokens,
                    )


def call_input(arguments: str) -> dict[str, Any] | None:
    """A tool call's arguments as an object; None when they are not one (cut at max_tokens)."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
