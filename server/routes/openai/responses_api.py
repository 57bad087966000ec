"""The Responses API routes (/v1/responses): parse, call the responses capability, encode.

Named apart from server/routes/responses.py, which holds the ASGI response helpers."""

from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.response.base import ASGIResponse

from schemas.openai.responses import DeletedResponse, InputItemList, Response, ResponseRequest
from server.accounts_hooks import Caller
from server.capabilities.text.responses import ResponsesService
from server.capabilities.text.responses_store import OPEN_OWNER
from server.errors import bad_request
from server.routes.openapi import operation_id
from server.routes.responses import event_stream, json_response

MAX_INPUT_ITEMS_PAGE = 100


def _owner(caller: Caller) -> str:
    """Stored responses belong to the key that made them (one shared owner when open)."""
    return caller.key_id if caller.key_id is not None else OPEN_OWNER


class ResponsesController(Controller):
    path = "/responses"
    tags = ["openai: text"]

    @post(
        "/",
        status_code=200,
        operation_id=operation_id("createResponse"),
        summary="Create a model response",
        responses={
            200: ResponseSpec(data_container=Response, description="JSON, or server-sent events when stream is true")
        },
    )
    async def create(self, data: ResponseRequest, responses: ResponsesService, caller: Caller) -> ASGIResponse:
        if data.stream:
            return event_stream(await responses.stream(data, _owner(caller), caller.meter))
        return json_response(await responses.create(data, _owner(caller), caller.meter))

    @get("/{response_id:str}", operation_id=operation_id("getResponse"), summary="Retrieve a stored response")
    async def retrieve(self, response_id: str, responses: ResponsesService, caller: Caller) -> Response:
        return await responses.retrieve(response_id, _owner(caller))

    @delete(
        "/{response_id:str}",
        status_code=200,
        operation_id=operation_id("deleteResponse"),
        summary="Delete a stored response",
    )
    async def delete(self, response_id: str, responses: ResponsesService, caller: Caller) -> DeletedResponse:
        return await responses.delete(response_id, _owner(caller))

    @get(
        "/{response_id:str}/input_items",
        operation_id=operation_id("listInputItems"),
        summary="List a stored response's input items",
    )
    async def input_items(
        self,
        response_id: str,
        responses: ResponsesService,
        caller: Caller,
        after: str | None = None,
        limit: int = 20,
        order: str = "desc",
    ) -> InputItemList:
        if not 1 <= limit <= MAX_INPUT_ITEMS_PAGE:
            raise bad_request(f"limit must be between 1 and {MAX_INPUT_ITEMS_PAGE}.", "limit")
        if order not in ("asc", "desc"):
            raise bad_request("order must be 'asc' or 'desc'.", "order")
        return await responses.input_items(response_id, _owner(caller), after=after, limit=limit, order=order)
