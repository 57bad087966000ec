"""vLLM's pooling routes: /classify on sequence classifiers, /pooling on any pooling model."""

from __future__ import annotations

import numpy as np

from engines.base import EmbeddingEngine, ModelKind, ScoreEngine
from engines.scheduler import Scheduler
from schemas.openai.common import Usage
from schemas.openai.embeddings import EmbeddingInput
from schemas.openai.pooling import (
    ClassificationData,
    ClassificationResponse,
    ClassifyRequest,
    PoolingData,
    PoolingRequest,
    PoolingResponse,
)
from server.accounts import UNMETERED, Meter
from server.capabilities.calls import engine_call, resident_engine
from server.capabilities.text.embeddings import encode_vector, pooling_inputs
from server.capabilities.text.sampling import new_id, unix_now
from server.errors import bad_request
from server.settings import Limits

# What each pooling model kind pools unless the request names a task.
_TASKS = {ModelKind.EMBEDDING: "embed", ModelKind.RERANK: "classify"}


def _usage(tokens: int) -> Usage:
    return Usage(prompt_tokens=tokens, total_tokens=tokens)


class PoolingService:
    def __init__(self, scheduler: Scheduler, limits: Limits) -> None:
        self.scheduler = scheduler
        self.limits = limits

    async def _classified(
        self, model: str, raw: EmbeddingInput, truncate: int | None, meter: Meter
    ) -> tuple[list[list[float]], list[str], int]:
        engine = await resident_engine(self.scheduler, model, ScoreEngine)
        inputs = await pooling_inputs(raw, truncate, engine, self.limits.max_batch_inputs)
        charge = meter.tokens(sum(len(ids) for ids in inputs))
        async with engine_call(self.scheduler, model, ScoreEngine, "classify", charge=charge) as (leased, record):
            result = await leased.classify(inputs, new_id("classify"))
            record.usage(input_tokens=result.prompt_tokens)
        return result.probs, result.labels, result.prompt_tokens

    async def classify(self, request: ClassifyRequest, meter: Meter = UNMETERED) -> ClassificationResponse:
        probs, labels, tokens = await self._classified(
            request.model, request.input, request.truncate_prompt_tokens, meter
        )
        data = [
            ClassificationData(
                index=index,
                label=labels[int(np.argmax(row))] if row else None,
                probs=row,
                num_classes=len(row),
            )
            for index, row in enumerate(probs)
        ]
        return ClassificationResponse(
            id=new_id("classify"), created=unix_now(), model=request.model, data=data, usage=_usage(tokens)
        )

    async def pool(self, request: PoolingRequest, meter: Meter = UNMETERED) -> PoolingResponse:
        kind = self.scheduler.spec(request.model).kind  # checked before anything loads
        task = _TASKS.get(kind)
        if task is None:
            raise bad_request(f"The model '{request.model}' is a {kind.value} model, not a pooling model.", "model")
        if request.task is not None and request.task != task:
            raise bad_request(f"The model '{request.model}' pools for the task '{task}' only.", "task")
        if task == "classify":
            rows, _, tokens = await self._classified(
                request.model, request.input, request.truncate_prompt_tokens, meter
            )
        else:
            rows, tokens = await self._embedded(request, meter)
        data = [
            PoolingData(index=index, data=encode_vector(np.asarray(row, dtype=np.float32), request.encoding_format))
            for index, row in enumerate(rows)
        ]
        return PoolingResponse(
            id=new_id("pool"), created=unix_now(), model=request.model, data=data, usage=_usage(tokens)
        )

    async def _embedded(self, request: PoolingRequest, meter: Meter) -> tuple[list[list[float]], int]:
        engine = await resident_engine(self.scheduler, request.model, EmbeddingEngine)
        inputs = await pooling_inputs(
            request.input, request.truncate_prompt_tokens, engine, self.limits.max_batch_inputs
        )
        charge = meter.tokens(sum(len(ids) for ids in inputs))
        async with engine_call(self.scheduler, request.model, EmbeddingEngine, "embeddings", charge=charge) as (
            leased,
            record,
        ):
            result = await leased.embed(inputs, new_id("pool"))
            record.usage(input_tokens=result.prompt_tokens)
        return result.vectors, result.prompt_tokens
