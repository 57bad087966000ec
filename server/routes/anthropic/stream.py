"""A chat turn's deltas as Anthropic's stream: typed events, each with its ``event:`` line.

``message_start`` (once admitted), ``ping``, then per content block ``content_block_start``,
its ``content_block_delta``s (``text_delta`` for text, ``input_json_delta`` for a tool call's
arguments) and ``content_block_stop``; finally ``message_delta`` (stop_reason, output tokens)
and ``message_stop``. Blocks open when their first piece arrives: text, then each tool call.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

import msgspec

from schemas.anthropic.messages import (
    ContentBlockDelta,
    ContentBlockStart,
    ContentBlockStop,
    InputJsonDelta,
    Message,
    MessageDelta,
    MessageStart,
    MessageStop,
    MessageUsage,
    OutputUsage,
    Ping,
    StopDelta,
    TextContent,
    TextDelta,
    ToolUseContent,
)
from schemas.openai.chat import ChatDelta
from server.capabilities.text.chat_turns import ChatTurn, ChatTurns
from server.routes.anthropic.translation import anthropic_id, stop_reason
from server.sse import named_event


def _event(payload: msgspec.Struct) -> bytes:
    """The event, named by its type (each event struct's tag)."""
    return named_event(str(payload.__struct_config__.tag), payload)


class _Blocks:
    """The content blocks sent so far: which one is open, and whether any was a tool call."""

    def __init__(self) -> None:
        self.index = -1
        self.open_kind: str | None = None
        self.open_call: int | None = None  # the chat delta's tool call index of the open block
        self.called = False

    def _open(self, block: TextContent | ToolUseContent) -> list[bytes]:
        events = self.close()
        self.index += 1
        self.open_kind = "text" if isinstance(block, TextContent) else "tool_use"
        events.append(_event(ContentBlockStart(index=self.index, content_block=block)))
        return events

    def close(self) -> list[bytes]:
        if self.open_kind is None:
            return []
        self.open_kind, self.open_call = None, None
        return [_event(ContentBlockStop(index=self.index))]

    def add(self, delta: ChatDelta) -> list[bytes]:
        events: list[bytes] = []
        if delta.content:
            if self.open_kind != "text":
                events += self._open(TextContent(text=""))
            events.append(_event(ContentBlockDelta(index=self.index, delta=TextDelta(text=delta.content))))
        for call in delta.tool_calls or []:
            function = call.function
            if (
                function is not None
                and function.name
                and (self.open_kind != "tool_use" or call.index != self.open_call)
            ):
                events += self._open(ToolUseContent(id=anthropic_id("toolu"), name=function.name, input={}))
                self.open_call, self.called = call.index, True
            if function is not None and function.arguments and self.open_kind == "tool_use":
                piece = InputJsonDelta(partial_json=function.arguments)
                events.append(_event(ContentBlockDelta(index=self.index, delta=piece)))
        return events


async def message_events(turns: ChatTurns, turn: ChatTurn, model: str) -> AsyncGenerator[bytes, None]:
    """The stream's events; its first (``message_start``) once the request holds its lease."""
    blocks = _Blocks()
    reason = None
    stop_sequence = None
    output_tokens = 0
    async with aclosing(turns.deltas(turn)) as deltas:
        await anext(deltas)  # admitted
        start = Message(
            id=anthropic_id("msg"),
            content=[],
            model=model,
            stop_reason=None,
            stop_sequence=None,
            usage=MessageUsage(input_tokens=turn.prompt_tokens, output_tokens=0),
        )
        yield _event(MessageStart(message=start)) + _event(Ping())
        async for piece in deltas:
            output_tokens = piece.completion_tokens
            if piece.delta is not None:
                for event in blocks.add(piece.delta):
                    yield event
            if piece.finish_reason is not None:
                reason = stop_reason(piece.finish_reason, piece.stop_string, blocks.called)
                stop_sequence = piece.stop_string if reason == "stop_sequence" else None
    for event in blocks.close():
        yield event
    yield _event(
        MessageDelta(
            delta=StopDelta(stop_reason=reason, stop_sequence=stop_sequence),
            usage=OutputUsage(output_tokens=output_tokens),
        )
    )
    yield _event(MessageStop())
