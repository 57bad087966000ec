"""POST /v1/messages and /v1/messages/count_tokens: parse, translate, run the chat turn, encode.

Keys come as ``x-api-key`` (Anthropic's SDKs) or ``Authorization: Bearer`` (server/auth.py).
``anthropic-version`` is accepted with any date (``2023-06-01``, what the SDKs send): there
is one version of these routes; a value that is not a date is refused. ``anthropic-beta`` is
ignored.
"""

from __future__ import annotations

import re
from typing import Annotated

from litestar import Controller, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from litestar.response.base import ASGIResponse

from schemas.anthropic.messages import CountTokensRequest, CountTokensResponse, Message, MessagesRequest
from schemas.errors import ApiError
from server.accounts_hooks import Caller
from server.capabilities.started_streams import started_stream
from server.capabilities.text.chat_turns import ChatTurns
from server.errors import bad_request
from server.routes.anthropic.stream import message_events
from server.routes.anthropic.translation import chat_request, message, renamed
from server.routes.responses import event_stream, json_response
from server.sse import anthropic_error_event, guarded_events

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")

AnthropicVersion = Annotated[
    str | None,
    Parameter(header="anthropic-version", description="Any date, e.g. 2023-06-01; there is one version here."),
]


def _check_version(version: str | None) -> None:
    if version is not None and not _DATE.fullmatch(version.strip()):
        raise bad_request(f"anthropic-version must be a date such as 2023-06-01, not {version!r}.", "anthropic-version")


class MessagesController(Controller):
    path = "/messages"
    tags = ["anthropic: messages"]

    @post(
        "",
        status_code=200,
        operation_id="createMessage",
        summary="Anthropic Messages: a chat turn (JSON, or typed server-sent events when stream is true)",
        responses={200: ResponseSpec(data_container=Message, description="JSON, or server-sent events")},
    )
    async def create(
        self, data: MessagesRequest, turns: ChatTurns, caller: Caller, anthropic_version: AnthropicVersion = None
    ) -> ASGIResponse:
        _check_version(anthropic_version)
        try:
            turn = await turns.start(chat_request(data), caller.meter)
            if data.stream:
                events = await started_stream(message_events(turns, turn, data.model))
                return event_stream(guarded_events(events, done=None, error_event=anthropic_error_event))
            return json_response(message(await turns.complete(turn), data.model))
        except ApiError as error:
            raise renamed(error) from None

    @post("/count_tokens", status_code=200, operation_id="countMessageTokens")
    async def count_tokens(
        self, data: CountTokensRequest, turns: ChatTurns, anthropic_version: AnthropicVersion = None
    ) -> CountTokensResponse:
        _check_version(anthropic_version)
        try:
            return CountTokensResponse(input_tokens=await turns.count_prompt_tokens(chat_request(data)))
        except ApiError as error:
            raise renamed(error) from None
