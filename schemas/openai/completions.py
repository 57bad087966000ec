from __future__ import annotations

from typing import Literal

import msgspec

from schemas.constraints import TokenId
from schemas.openai.common import PromptLogprobs, SamplingRequest, Usage

# msgspec allows one array type per union; the service checks that a list is all
# strings, all token ids, or all token-id lists.
Prompt = str | list[str | TokenId | list[TokenId]]


class CompletionRequest(SamplingRequest, kw_only=True):
    prompt: Prompt
    suffix: str | None = None
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    max_tokens: int | None = 16


class CompletionLogprobs(msgspec.Struct, kw_only=True):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(msgspec.Struct, kw_only=True):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    # vLLM's extensions, when asked for (prompt_* on a choice's first chunk when streamed).
    prompt_logprobs: PromptLogprobs | None = None
    prompt_token_ids: list[int] | None = None
    token_ids: list[int] | None = None


class Completion(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
