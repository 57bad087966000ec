"""The Responses API over the chat capability.

A thin adapter: the request becomes a chat completion request (responses_items.py), the chat
capability answers it (template, sampling, structured output, tools, metering, tracing, the
lease taken before a stream's first byte), and its answer becomes a Response. The stream
reads the chat capability's own stream, its OpenAI chat chunks, so chat stays the one home
of how text and tool calls are produced and this module only renames them.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

import msgspec

from engines.workpools import WorkPool, run_in
from schemas.errors import ApiError, ErrorCode
from schemas.openai.chat import ChatChunkChoice, ChatCompletion
from schemas.openai.common import ErrorDetail, Usage
from schemas.openai.responses import (
    ConversationItem,
    DeletedResponse,
    IncompleteDetails,
    InputItemList,
    Response,
    ResponseRequest,
    ResponseUsage,
    TextConfig,
)
from server.accounts import UNMETERED, Meter
from server.capabilities.text.chat import ChatService
from server.capabilities.text.responses_events import ResponseEvents
from server.capabilities.text.responses_items import (
    chat_request,
    new_item_id,
    normalised_items,
    output_items,
)
from server.capabilities.text.responses_store import (
    OPEN_OWNER,
    ResponseStore,
    StoredResponse,
    encoded_conversation,
)
from server.capabilities.text.sampling import unix_now
from server.errors import bad_request
from server.sse import guarded_events


class _ChatChunk(msgspec.Struct, kw_only=True):
    """A chat stream event: a chunk, or the error that ended the stream."""

    choices: list[ChatChunkChoice] = []
    usage: Usage | None = None
    error: ErrorDetail | None = None


_chunk_decoder = msgspec.json.Decoder(_ChatChunk)


async def _chat_events(stream: AsyncIterator[bytes]) -> AsyncGenerator[_ChatChunk, None]:
    """The chat capability's SSE stream, read back as chunks; its error event raised."""
    buffer = b""
    async for piece in stream:
        buffer += piece
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            if not event.startswith(b"data: "):
                continue
            data = event[len(b"data: ") :]
            if data == b"[DONE]":
                return
            chunk = _chunk_decoder.decode(data)
            if chunk.error is not None:
                code = chunk.error.code
                known = code is not None and code in ErrorCode.__members__
                error_code = ErrorCode(code) if known and code is not None else ErrorCode.UNKNOWN
                raise ApiError(error_code, chunk.error.message, param=chunk.error.param)
            yield chunk


def _usage(usage: Usage) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens, total_tokens=usage.total_tokens
    )


class ResponsesService:
    def __init__(self, chat: ChatService, store: ResponseStore, *, max_conversation_bytes: int) -> None:
        self.chat = chat
        self.store = store
        self.max_conversation_bytes = max_conversation_bytes

    async def _stored(self, owner: str, response_id: str, param: str = "response_id") -> StoredResponse:
        stored = await run_in(WorkPool.STORAGE, self.store.get, owner, response_id)
        if stored is None:
            raise ApiError(ErrorCode.RESPONSE_NOT_FOUND, f"Response '{response_id}' does not exist.", param=param)
        return stored

    async def _conversation(self, request: ResponseRequest, owner: str) -> tuple[list[ConversationItem], int]:
        """Every item the response answers, and where the request's own input starts."""
        own = normalised_items(request)
        before: list[ConversationItem] = []
        if request.previous_response_id is not None:
            previous = await self._stored(owner, request.previous_response_id, "previous_response_id")
            before = [*previous.conversation, *previous.response.output]
        conversation = [*before, *own]
        if request.store and len(encoded_conversation(conversation)) > self.max_conversation_bytes:
            raise bad_request(
                f"The conversation exceeds {self.max_conversation_bytes} bytes, the most a stored response may hold "
                "(responses.max_conversation_bytes); send store=false, or start a new chain.",
                "input",
            )
        return conversation, len(before)

    def _base(self, request: ResponseRequest) -> Response:
        return Response(
            id=new_item_id("resp"),
            created_at=unix_now(),
            status="in_progress",
            instructions=request.instructions,
            max_output_tokens=request.max_output_tokens,
            model=request.model,
            parallel_tool_calls=request.parallel_tool_calls,
            previous_response_id=request.previous_response_id,
            temperature=request.temperature,
            top_p=request.top_p,
            tool_choice=request.tool_choice if request.tool_choice is not None else "auto",
            tools=list(request.tools or []),
            text=request.text or TextConfig(),
            truncation=request.truncation or "disabled",
            metadata=request.metadata or {},
            store=request.store,
            user=request.user,
        )

    async def _keep(self, owner: str, response: Response, conversation: list[ConversationItem], start: int) -> None:
        if response.store:
            stored = StoredResponse(response=response, conversation=conversation, own_input_start=start)
            await run_in(WorkPool.STORAGE, self.store.put, owner, stored)

    async def create(self, request: ResponseRequest, owner: str = OPEN_OWNER, meter: Meter = UNMETERED) -> Response:
        conversation, start = await self._conversation(request, owner)
        completion = await self.chat.create(chat_request(request, conversation), meter)
        response = self._answer(self._base(request), completion)
        await self._keep(owner, response, conversation, start)
        return response

    @staticmethod
    def _answer(base: Response, completion: ChatCompletion) -> Response:
        choice = completion.choices[0]
        truncated = choice.finish_reason == "length"
        calls = [(call.id, call.function.name, call.function.arguments) for call in choice.message.tool_calls or []]
        return msgspec.structs.replace(
            base,
            status="incomplete" if truncated else "completed",
            completed_at=None if truncated else unix_now(),
            incomplete_details=IncompleteDetails(reason="max_output_tokens") if truncated else None,
            output=output_items(choice.message.content, calls, truncated=truncated),
            usage=_usage(completion.usage),
        )

    async def stream(
        self, request: ResponseRequest, owner: str = OPEN_OWNER, meter: Meter = UNMETERED
    ) -> AsyncIterator[bytes]:
        """The typed events. What refuses the request (an unknown previous response, a busy
        model) raises here, before the first byte; errors after it are an ``error`` event."""
        conversation, start = await self._conversation(request, owner)
        chunks = await self.chat.stream(chat_request(request, conversation), meter)
        events = ResponseEvents(self._base(request))
        return guarded_events(
            self._events(events, chunks, owner, conversation, start), done=None, error_event=events.error
        )

    async def _events(
        self,
        events: ResponseEvents,
        chunks: AsyncIterator[bytes],
        owner: str,
        conversation: list[ConversationItem],
        start: int,
    ) -> AsyncGenerator[bytes, None]:
        try:
            for event in events.start():
                yield event
            usage = ResponseUsage(input_tokens=0, output_tokens=0, total_tokens=0)
            truncated = False
            async for chunk in _chat_events(chunks):
                if chunk.usage is not None:
                    usage = _usage(chunk.usage)
                for choice in chunk.choices:
                    delta = choice.delta
                    if delta.content:
                        for event in events.text(delta.content):
                            yield event
                    for call in delta.tool_calls or []:
                        function = call.function
                        pieces = events.tool_call(
                            call.index,
                            call.id,
                            function.name if function else None,
                            function.arguments if function else None,
                        )
                        for event in pieces:
                            yield event
                    if choice.finish_reason is not None:
                        truncated = choice.finish_reason == "length"
            response, closing = events.finish(usage, truncated=truncated)
            for event in closing:
                yield event
            # Stored before the client hears it is complete, so that it can be read at once.
            await self._keep(owner, response, conversation, start)
            yield events.end(response)
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()

    async def retrieve(self, response_id: str, owner: str = OPEN_OWNER) -> Response:
        return (await self._stored(owner, response_id)).response

    async def delete(self, response_id: str, owner: str = OPEN_OWNER) -> DeletedResponse:
        if not await run_in(WorkPool.STORAGE, self.store.delete, owner, response_id):
            raise ApiError(
                ErrorCode.RESPONSE_NOT_FOUND, f"Response '{response_id}' does not exist.", param="response_id"
            )
        return DeletedResponse(id=response_id)

    async def input_items(
        self,
        response_id: str,
        owner: str = OPEN_OWNER,
        *,
        after: str | None = None,
        limit: int = 20,
        order: str = "desc",
    ) -> InputItemList:
        """The response's own input items (not the chain's), newest first unless order='asc'."""
        items = list((await self._stored(owner, response_id)).own_input)
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [item.id for item in items]
            if after not in ids:
                raise bad_request(f"No input item '{after}' in response '{response_id}'.", "after")
            items = items[ids.index(after) + 1 :]
        page = items[:limit]
        return InputItemList(
            data=page,
            first_id=page[0].id if page else None,
            last_id=page[-1].id if page else None,
            has_more=len(items) > limit,
        )
