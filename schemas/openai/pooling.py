"""vLLM's pooling routes: /classify (a sequence classifier's class probabilities) and
/pooling (the pooled output as it is: an embedding, or class probabilities)."""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.constraints import TruncatePromptTokens
from schemas.openai.common import Usage
from schemas.openai.embeddings import EmbeddingInput


class ClassifyRequest(msgspec.Struct, kw_only=True):
    model: str
    input: EmbeddingInput
    truncate_prompt_tokens: TruncatePromptTokens | None = None
    user: str | None = None


class ClassificationData(msgspec.Struct, kw_only=True):
    index: int
    label: str | None
    probs: list[float]
    num_classes: int


class ClassificationResponse(msgspec.Struct, kw_only=True):
    id: str
    created: int
    model: str
    data: list[ClassificationData]
    usage: Usage
    object: Literal["list"] = "list"


class PoolingRequest(msgspec.Struct, kw_only=True):
    model: str
    input: EmbeddingInput
    # What to pool: unset, the model's own task (embed for an embedding model, classify for a
    # sequence classifier).
    task: Literal["embed", "classify"] | None = None
    encoding_format: Literal["float", "base64"] = "float"
    truncate_prompt_tokens: TruncatePromptTokens | None = None
    user: str | None = None


class PoolingData(msgspec.Struct, kw_only=True):
    index: int
    data: list[float] | str
    object: Literal["pooling"] = "pooling"


class PoolingResponse(msgspec.Struct, kw_only=True):
    id: str
    created: int
    model: str
    data: list[PoolingData]
    usage: Usage
    object: Literal["list"] = "list"
