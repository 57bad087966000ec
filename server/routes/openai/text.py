"""Chat, completions, embeddings, rerank, score, tokenize: parse, call a service, encode."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable

import msgspec
from litestar import Controller, Request, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse

from schemas.openai.chat import ChatCompletion, ChatCompletionRequest
from schemas.openai.completions import Completion, CompletionRequest
from schemas.openai.embeddings import EmbeddingRequest, EmbeddingResponse
from schemas.openai.rerank import RerankRequest, RerankResponse, ScoreRequest, ScoreResponse
from schemas.openai.tokenize import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from server.accounts_hooks import caller_meter
from server.routes.disconnect import until_disconnect
from server.services import Services

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_encoder = msgspec.json.Encoder()


def _event_stream(events: AsyncIterator[bytes]) -> ASGIResponse:
    # The streaming response watches for the client's disconnect and cancels the
    # iterator, which aborts the engine request.
    return ASGIStreamingResponse(iterator=events, media_type="text/event-stream", headers=SSE_HEADERS)


async def _json(request: Request, work: Awaitable[msgspec.Struct]) -> ASGIResponse:
    # Handlers answer with ASGI responses so that one route can send JSON or SSE;
    # the body schemas are declared to OpenAPI through ``responses``.
    return ASGIResponse(body=_encoder.encode(await until_disconnect(request, work)), media_type="application/json")


def _documented(model: type[msgspec.Struct], *, streams: bool = False) -> dict[int, ResponseSpec]:
    description = "JSON, or server-sent events when stream is true" if streams else "Success"
    return {200: ResponseSpec(data_container=model, description=description)}


class TextController(Controller):
    path = ""
    tags = ["openai: text"]

    @post("/chat/completions", status_code=200, responses=_documented(ChatCompletion, streams=True))
    async def chat(self, request: Request, data: ChatCompletionRequest, services: Services) -> ASGIResponse:
        if data.stream:
            return _event_stream(await services.chat.stream(data, caller_meter(request)))
        return await _json(request, services.chat.create(data, caller_meter(request)))

    @post("/completions", status_code=200, responses=_documented(Completion, streams=True))
    async def completions(self, request: Request, data: CompletionRequest, services: Services) -> ASGIResponse:
        if data.stream:
            return _event_stream(await services.completions.stream(data, caller_meter(request)))
        return await _json(request, services.completions.create(data, caller_meter(request)))

    @post("/embeddings", status_code=200, responses=_documented(EmbeddingResponse))
    async def embeddings(self, request: Request, data: EmbeddingRequest, services: Services) -> ASGIResponse:
        return await _json(request, services.embeddings.create(data, caller_meter(request)))

    @post("/rerank", status_code=200, responses=_documented(RerankResponse))
    async def rerank(self, request: Request, data: RerankRequest, services: Services) -> ASGIResponse:
        return await _json(request, services.rerank.rerank(data, caller_meter(request)))

    @post("/score", status_code=200, responses=_documented(ScoreResponse))
    async def score(self, request: Request, data: ScoreRequest, services: Services) -> ASGIResponse:
        return await _json(request, services.rerank.score(data, caller_meter(request)))

    @post("/tokenize", status_code=200)
    async def tokenize(self, data: TokenizeRequest, services: Services) -> TokenizeResponse:
        return await services.tokenize.tokenize(data)

    @post("/detokenize", status_code=200)
    async def detokenize(self, data: DetokenizeRequest, services: Services) -> DetokenizeResponse:
        return await services.tokenize.detokenize(data)
