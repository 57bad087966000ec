"""POST /tokenize and /detokenize."""

from __future__ import annotations

from typing import cast

from engines.base import ModelKind, TextGenerationEngine
from engines.scheduler import Scheduler
from schemas.openai.tokenize import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from server.serving.chat import message_to_template
from server.serving.common import bad_request, require_kind


class TokenizeService:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        engine = cast(TextGenerationEngine, await self.scheduler.resident_engine(request.model))
        if request.messages is not None:
            require_kind(request.model, ModelKind.CHAT, engine.spec.kind, "chat templates")
            tokens = engine.render_chat(
                [message_to_template(message) for message in request.messages],
                add_generation_prompt=request.add_generation_prompt,
            )
        elif request.prompt is not None:
            tokens = engine.tokenize(request.prompt, add_special_tokens=request.add_special_tokens)
        else:
            raise bad_request("Give either prompt or messages.", "prompt")
        return TokenizeResponse(tokens=tokens, count=len(tokens), max_model_len=engine.info.max_model_len)

    async def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        engine = cast(TextGenerationEngine, await self.scheduler.resident_engine(request.model))
        require_kind(request.model, ModelKind.CHAT, engine.spec.kind, "detokenize")
        return DetokenizeResponse(prompt=engine.detokenize(request.tokens))
