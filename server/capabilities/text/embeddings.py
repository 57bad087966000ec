"""Embeddings: texts or token ids -> vectors, float or base64."""

from __future__ import annotations

import base64
from typing import Any, cast

import numpy as np

from engines.base import EmbeddingEngine, ScoreEngine
from engines.scheduler import Scheduler
from schemas.openai.embeddings import Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from server.accounts import UNMETERED, Meter
from server.capabilities.calls import engine_call, resident_engine
from server.capabilities.text.sampling import check_input_ids, new_id, split_inputs, token_ids, truncate_prompt
from server.errors import bad_request
from server.settings import Limits


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # What the openai SDK decodes: little-endian float32, base64.
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return cast(list[float], vector.tolist())


async def pooling_inputs(
    raw: str | list[Any], truncate: int | None, engine: EmbeddingEngine | ScoreEngine, max_items: int
) -> list[list[int]]:
    """The ``input`` of a pooling route (embeddings, classify, pooling) as token id lists, each
    one truncated as asked and within the model's context."""
    items = split_inputs(raw, "input", max_items)
    check_input_ids(raw, engine.info.vocab_size, "input")
    limit = engine.info.max_model_len
    token_lists = []
    for position, tokens in enumerate(await token_ids(engine, items)):
        ids = truncate_prompt(tokens, truncate, limit)
        if not ids:
            raise bad_request(f"input[{position}] is empty.", "input")
        if len(ids) > limit:
            raise bad_request(
                f"This model's maximum context length is {limit} tokens, but input[{position}] has {len(ids)} tokens.",
                "input",
            )
        token_lists.append(ids)
    return token_lists


class EmbeddingService:
    def __init__(self, scheduler: Scheduler, limits: Limits) -> None:
        self.scheduler = scheduler
        self.limits = limits

    async def _inputs(self, request: EmbeddingRequest, engine: EmbeddingEngine) -> list[list[int]]:
        return await pooling_inputs(request.input, request.truncate_prompt_tokens, engine, self.limits.max_batch_inputs)

    async def create(self, request: EmbeddingRequest, meter: Meter = UNMETERED) -> EmbeddingResponse:
        engine = await resident_engine(self.scheduler, request.model, EmbeddingEngine)
        if request.dimensions is not None and not engine.spec.supports_dimensions:
            raise bad_request(f"The model '{request.model}' does not support the dimensions parameter.", "dimensions")
        inputs = await self._inputs(request, engine)
        charge = meter.tokens(sum(len(ids) for ids in inputs))
        async with engine_call(self.scheduler, request.model, EmbeddingEngine, "embeddings", charge=charge) as call:
            leased, record = call
            result = await leased.embed(inputs, new_id("embd"))
            record.usage(input_tokens=result.prompt_tokens)
        vectors = np.asarray(result.vectors, dtype=np.float32)
        if request.dimensions is not None:
            if not 1 <= request.dimensions <= vectors.shape[1]:
                raise bad_request(f"dimensions must be between 1 and {vectors.shape[1]}.", "dimensions")
            # Matryoshka models: keep the leading dimensions, then renormalise.
            vectors = vectors[:, : request.dimensions]
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return EmbeddingResponse(
            data=[
                Embedding(index=i, embedding=encode_vector(vector, request.encoding_format))
                for i, vector in enumerate(vectors)
            ],
            model=request.model,
            usage=EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
        )
