"""Rerank (Cohere/Jina shape) and score (pairwise) on cross-encoder engines."""

from __future__ import annotations

from engines.base import ScoreEngine, ScoreResult
from engines.scheduler import Scheduler
from schemas.openai.rerank import (
    SCORE_FIELDS,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    ScoreData,
    ScoreRequest,
    ScoreResponse,
)
from server.accounts import UNMETERED, Meter
from server.capabilities.calls import SAME_NAMES, WireNames, engine_call
from server.capabilities.text.sampling import new_id, unix_now
from server.errors import bad_request
from server.settings import Limits


def score_texts(request: ScoreRequest) -> tuple[list[str], list[str], str, str]:
    """The queries and texts of a /score request, in whichever of vLLM's field pairs it used,
    and the two field names."""
    given = [
        (left, right)
        for left, right in SCORE_FIELDS
        if getattr(request, left) is not None and getattr(request, right) is not None
    ]
    present = {name for pair in SCORE_FIELDS for name in pair if getattr(request, name) is not None}
    if len(given) != 1 or present != set(given[0]):
        pairs = ", ".join(f"{left} and {right}" for left, right in SCORE_FIELDS)
        raise bad_request(f"Give exactly one pair of fields to score: {pairs}.", "text_1")
    left_name, right_name = given[0]
    left, right = getattr(request, left_name), getattr(request, right_name)
    return ([left] if isinstance(left, str) else left), ([right] if isinstance(right, str) else right), *given[0]


class RerankService:
    def __init__(self, scheduler: Scheduler, limits: Limits) -> None:
        self.scheduler = scheduler
        self.limits = limits

    async def _score(
        self,
        model: str,
        pairs: list[tuple[str, str]],
        request_id: str,
        meter: Meter = UNMETERED,
        names: WireNames = SAME_NAMES,
    ) -> ScoreResult:
        async with engine_call(
            self.scheduler, model, ScoreEngine, "rerank", response_id=request_id, names=names
        ) as call:
            engine, record = call
            result = await engine.score(pairs, request_id)
            record.usage(input_tokens=result.prompt_tokens)
        # The tokens are counted by the engine: charged once scored, never past the balance.
        meter.tokens(result.prompt_tokens).close()
        return result

    async def rerank(self, request: RerankRequest, meter: Meter = UNMETERED) -> RerankResponse:
        documents = [doc if isinstance(doc, str) else doc.text for doc in request.documents]
        if not documents or len(documents) > self.limits.max_batch_inputs:
            raise bad_request(f"documents must hold between 1 and {self.limits.max_batch_inputs} items.", "documents")
        if request.top_n is not None and request.top_n < 1:
            raise bad_request("top_n must be at least 1.", "top_n")
        request_id = new_id("rerank")
        result = await self._score(request.model, [(request.query, doc) for doc in documents], request_id, meter)
        ranked = sorted(enumerate(result.scores), key=lambda item: item[1], reverse=True)
        if request.top_n is not None:
            ranked = ranked[: request.top_n]
        return RerankResponse(
            id=request_id,
            model=request.model,
            results=[
                RerankResult(
                    index=index,
                    relevance_score=score,
                    document=RerankDocument(text=documents[index]) if request.return_documents else None,
                )
                for index, score in ranked
            ],
            usage=RerankUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
        )

    async def score(self, request: ScoreRequest, meter: Meter = UNMETERED) -> ScoreResponse:
        left, right, left_name, right_name = score_texts(request)
        if len(left) == 1:
            left = left * len(right)
        if len(left) != len(right) or not right:
            raise bad_request(f"{left_name} must be one text or as many texts as {right_name}.", left_name)
        if len(right) > self.limits.max_batch_inputs:
            raise bad_request(f"At most {self.limits.max_batch_inputs} pairs per request.", right_name)
        request_id = new_id("score")
        names = WireNames({"query": left_name})  # the engine's "query" is the first text
        result = await self._score(request.model, list(zip(left, right, strict=True)), request_id, meter, names)
        return ScoreResponse(
            id=request_id,
            created=unix_now(),
            model=request.model,
            data=[ScoreData(index=i, score=score) for i, score in enumerate(result.scores)],
            usage=RerankUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
        )
