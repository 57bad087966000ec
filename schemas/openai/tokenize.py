from __future__ import annotations

import msgspec

from schemas.constraints import TokenId
from schemas.openai.chat import ChatMessage, Tool


class TokenizeRequest(msgspec.Struct, kw_only=True):
    model: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    # Rendered into the chat prompt as chat completions renders them, so the count matches.
    tools: list[Tool] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool | None = None  # as chat completions' (see there)
    continue_final_message: bool = False


class TokenizeResponse(msgspec.Struct, kw_only=True):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeRequest(msgspec.Struct, kw_only=True):
    model: str
    tokens: list[TokenId]


class DetokenizeResponse(msgspec.Struct, kw_only=True):
    prompt: str
