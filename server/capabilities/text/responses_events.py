"""The typed event stream of one streamed response, built from the chat capability's deltas.

Order, as OpenAI sends it: ``response.created`` and ``response.in_progress``; then per output
item ``response.output_item.added``, its content (for a message: ``response.content_part.added``,
``response.output_text.delta``..., ``response.output_text.done``, ``response.content_part.done``;
for a function call: ``response.function_call_arguments.delta``...,
``response.function_call_arguments.done``) and ``response.output_item.done``; last
``response.completed`` (or ``response.incomplete``). Every event carries the next
``sequence_number``, from 0. One item is open at a time: text after a call, or a call after
text, closes what came before.
"""

from __future__ import annotations

import msgspec

from schemas.errors import ApiError
from schemas.openai.responses import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    ContentPartEvent,
    ErrorEvent,
    FunctionCallItem,
    IncompleteDetails,
    LifecycleEvent,
    MessageItem,
    OutputItem,
    OutputItemEvent,
    OutputText,
    Response,
    ResponseUsage,
    StreamEvent,
    TextDeltaEvent,
    TextDoneEvent,
)
from server.capabilities.text.responses_items import new_item_id
from server.capabilities.text.sampling import unix_now

_encoder = msgspec.json.Encoder()


class ResponseEvents:
    def __init__(self, base: Response) -> None:
        self.base = base  # status in_progress, no output yet
        self.output: list[OutputItem] = []
        self._sequence = 0
        self._open: MessageItem | FunctionCallItem | None = None
        self._text = ""
        self._call_index: int | None = None  # the chat delta index of the open call

    def _event(self, event: StreamEvent) -> bytes:
        return b"event: " + event.type.encode() + b"\ndata: " + _encoder.encode(event) + b"\n\n"

    def _next(self) -> int:
        number = self._sequence
        self._sequence += 1
        return number

    def start(self) -> list[bytes]:
        return [
            self._event(LifecycleEvent(type=kind, sequence_number=self._next(), response=self.base))
            for kind in ("response.created", "response.in_progress")
        ]

    def text(self, delta: str) -> list[bytes]:
        events: list[bytes] = []
        if not isinstance(self._open, MessageItem):
            events += self._close(truncated=False)
            events += self._open_message()
        self._text += delta
        assert self._open is not None
        events.append(
            self._event(
                TextDeltaEvent(
                    sequence_number=self._next(),
                    item_id=self._open.id,
                    output_index=len(self.output),
                    content_index=0,
                    delta=delta,
                )
            )
        )
        return events

    def tool_call(self, index: int, call_id: str | None, name: str | None, arguments: str | None) -> list[bytes]:
        """A piece of the call at chat delta ``index``: its first piece names it."""
        events: list[bytes] = []
        if not isinstance(self._open, FunctionCallItem) or index != self._call_index:
            events += self._close(truncated=False)
            self._call_index = index
            self._open = FunctionCallItem(
                id=new_item_id("fc"),
                call_id=call_id or new_item_id("call"),
                name=name or "",
                arguments="",
                status="in_progress",
            )
            events.append(self._item_event("response.output_item.added", self._open))
        call = self._open
        if arguments:
            call.arguments += arguments
            events.append(
                self._event(
                    ArgumentsDeltaEvent(
                        sequence_number=self._next(), item_id=call.id, output_index=len(self.output), delta=arguments
                    )
                )
            )
        return events

    def finish(self, usage: ResponseUsage, *, truncated: bool) -> tuple[Response, list[bytes]]:
        """Closes what is open and returns the final response (sent by ``end``, once stored)."""
        events = self._close(truncated=truncated)
        if not self.output:  # nothing said and nothing called: an empty message, as create answers
            events += self._open_message()
            events += self._close(truncated=truncated)
        response = msgspec.structs.replace(
            self.base,
            status="incomplete" if truncated else "completed",
            completed_at=None if truncated else unix_now(),
            incomplete_details=IncompleteDetails(reason="max_output_tokens") if truncated else None,
            output=list(self.output),
            usage=usage,
        )
        return response, events

    def end(self, response: Response) -> bytes:
        kind = "response.incomplete" if response.status == "incomplete" else "response.completed"
        return self._event(LifecycleEvent(type=kind, sequence_number=self._next(), response=response))

    def error(self, error: ApiError) -> bytes:
        """An error after the stream began: OpenAI's ``error`` event."""
        return self._event(
            ErrorEvent(sequence_number=self._next(), code=error.code.value, message=error.message, param=error.param)
        )

    def _item_event(self, kind: str, item: OutputItem) -> bytes:
        return self._event(
            OutputItemEvent(type=kind, sequence_number=self._next(), output_index=len(self.output), item=item)
        )

    def _open_message(self) -> list[bytes]:
        self._open = MessageItem(id=new_item_id("msg"), role="assistant", content=[], status="in_progress")
        self._text = ""
        return [
            self._item_event("response.output_item.added", self._open),
            self._event(
                ContentPartEvent(
                    type="response.content_part.added",
                    sequence_number=self._next(),
                    item_id=self._open.id,
                    output_index=len(self.output),
                    content_index=0,
                    part=OutputText(text=""),
                )
            ),
        ]

    def _close(self, *, truncated: bool) -> list[bytes]:
        item, index = self._open, len(self.output)
        if item is None:
            return []
        self._open = None
        if isinstance(item, FunctionCallItem):
            self._call_index = None
            done_call = msgspec.structs.replace(item, status="completed")
            self.output.append(done_call)
            return [
                self._event(
                    ArgumentsDoneEvent(
                        sequence_number=self._next(),
                        item_id=item.id,
                        output_index=index,
                        name=item.name,
                        arguments=item.arguments,
                    )
                ),
                self._item_event_at("response.output_item.done", done_call, index),
            ]
        part = OutputText(text=self._text)
        done_message = msgspec.structs.replace(item, content=[part], status="incomplete" if truncated else "completed")
        self.output.append(done_message)
        return [
            self._event(
                TextDoneEvent(
                    sequence_number=self._next(), item_id=item.id, output_index=index, content_index=0, text=self._text
                )
            ),
            self._event(
                ContentPartEvent(
                    type="response.content_part.done",
                    sequence_number=self._next(),
                    item_id=item.id,
                    output_index=index,
                    content_index=0,
                    part=part,
                )
            ),
            self._item_event_at("response.output_item.done", done_message, index),
        ]

    def _item_event_at(self, kind: str, item: OutputItem, index: int) -> bytes:
        return self._event(OutputItemEvent(type=kind, sequence_number=self._next(), output_index=index, item=item))
