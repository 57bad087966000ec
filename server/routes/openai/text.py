"""Chat, completions, embeddings, rerank, score, classify, pooling, tokenize: parse, call the
capability, encode."""

from __future__ import annotations

import msgspec
from litestar import Controller, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.response.base import ASGIResponse

from schemas.openai.chat import ChatCompletion, ChatCompletionRequest
from schemas.openai.completions import Completion, CompletionRequest
from schemas.openai.embeddings import EmbeddingRequest, EmbeddingResponse
from schemas.openai.pooling import ClassificationResponse, ClassifyRequest, PoolingRequest, PoolingResponse
from schemas.openai.rerank import RerankRequest, RerankResponse, ScoreRequest, ScoreResponse
from schemas.openai.tokenize import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from server.accounts_hooks import Caller
from server.capabilities.text.chat import ChatService
from server.capabilities.text.completions import CompletionService
from server.capabilities.text.embeddings import EmbeddingService
from server.capabilities.text.pooling import PoolingService
from server.capabilities.text.rerank import RerankService
from server.capabilities.text.tokenize import TokenizeService
from server.routes.openapi import operation_id
from server.routes.responses import event_stream, json_response


def _documented(model: type[msgspec.Struct], *, streams: bool = False) -> dict[int, ResponseSpec]:
    description = "JSON, or server-sent events when stream is true" if streams else "Success"
    return {200: ResponseSpec(data_container=model, description=description)}


class TextController(Controller):
    path = ""
    tags = ["openai: text"]

    @post(
        "/chat/completions",
        status_code=200,
        operation_id=operation_id("createChatCompletion"),
        responses=_documented(ChatCompletion, streams=True),
    )
    async def chat(self, data: ChatCompletionRequest, chat: ChatService, caller: Caller) -> ASGIResponse:
        if data.stream:
            return event_stream(await chat.stream(data, caller.meter))
        return json_response(await chat.create(data, caller.meter))

    @post(
        "/completions",
        status_code=200,
        operation_id=operation_id("createCompletion"),
        responses=_documented(Completion, streams=True),
    )
    async def completions(
        self, data: CompletionRequest, completions: CompletionService, caller: Caller
    ) -> ASGIResponse:
        if data.stream:
            return event_stream(await completions.stream(data, caller.meter))
        return json_response(await completions.create(data, caller.meter))

    @post(
        "/embeddings",
        status_code=200,
        operation_id=operation_id("createEmbedding"),
        responses=_documented(EmbeddingResponse),
    )
    async def embeddings(self, data: EmbeddingRequest, embeddings: EmbeddingService, caller: Caller) -> ASGIResponse:
        return json_response(await embeddings.create(data, caller.meter))

    @post("/rerank", status_code=200, operation_id=operation_id("createRerank"), responses=_documented(RerankResponse))
    async def rerank(self, data: RerankRequest, rerank: RerankService, caller: Caller) -> ASGIResponse:
        return json_response(await rerank.rerank(data, caller.meter))

    @post("/score", status_code=200, operation_id=operation_id("createScore"), responses=_documented(ScoreResponse))
    async def score(self, data: ScoreRequest, rerank: RerankService, caller: Caller) -> ASGIResponse:
        return json_response(await rerank.score(data, caller.meter))

    @post(
        "/classify",
        status_code=200,
        operation_id=operation_id("createClassification"),
        responses=_documented(ClassificationResponse),
    )
    async def classify(self, data: ClassifyRequest, pooling: PoolingService, caller: Caller) -> ASGIResponse:
        return json_response(await pooling.classify(data, caller.meter))

    @post(
        "/pooling", status_code=200, operation_id=operation_id("createPooling"), responses=_documented(PoolingResponse)
    )
    async def pooling(self, data: PoolingRequest, pooling: PoolingService, caller: Caller) -> ASGIResponse:
        return json_response(await pooling.pool(data, caller.meter))

    @post("/tokenize", status_code=200, operation_id=operation_id("tokenize"))
    async def tokenize(self, data: TokenizeRequest, tokenize: TokenizeService) -> TokenizeResponse:
        return await tokenize.tokenize(data)

    @post("/detokenize", status_code=200, operation_id=operation_id("detokenize"))
    async def detokenize(self, data: DetokenizeRequest, tokenize: TokenizeService) -> DetokenizeResponse:
        return await tokenize.detokenize(data)
