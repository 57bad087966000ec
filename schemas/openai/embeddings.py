from __future__ import annotations

from typing import Literal

import msgspec

from schemas.constraints import TokenId, TruncatePromptTokens

# As with completion prompts, the service checks that a list is homogeneous.
EmbeddingInput = str | list[str | TokenId | list[TokenId]]


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    model: str
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    truncate_prompt_tokens: TruncatePromptTokens | None = None  # vLLM's (see SamplingExtras)


class Embedding(msgspec.Struct, kw_only=True):
    index: int
    embedding: list[float] | str
    object: Literal["embedding"] = "embedding"


class EmbeddingUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(msgspec.Struct, kw_only=True):
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
    object: Literal["list"] = "list"
