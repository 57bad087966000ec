"""Tokenize (a prompt, or chat messages through the template) and detokenize."""

from __future__ import annotations

import msgspec

from engines.base import EmbeddingEngine, Engine, ModelKind, TextGenerationEngine
from engines.scheduler import Scheduler
from engines.workpools import WorkPool, run_in
from schemas.openai.tokenize import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from server.capabilities.calls import resident_engine
from server.capabilities.text.chat_shapes import message_to_template
from server.capabilities.text.sampling import check_token_ids
from server.capabilities.text.templates import ChatTemplateInput, TemplateRenderer, generation_prompt
from server.errors import bad_request

# A plain prompt is tokenized by any model with a tokenizer of its own.
_TOKENIZING_KINDS = (ModelKind.CHAT, ModelKind.EMBEDDING)


class TokenizeService:
    def __init__(self, scheduler: Scheduler, templates: TemplateRenderer) -> None:
        self.scheduler = scheduler
        self.templates = templates

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        if request.messages is not None:
            chat = await resident_engine(self.scheduler, request.model, TextGenerationEngine)
            tokens = await self.templates.render(
                chat,
                [message_to_template(message) for message in request.messages],
                ChatTemplateInput(None, client_template=False),
                tools=msgspec.to_builtins(request.tools) if request.tools else None,
                add_generation_prompt=generation_prompt(request.add_generation_prompt, request.continue_final_message),
                continue_final_message=request.continue_final_message,
            )
            return TokenizeResponse(tokens=tokens, count=len(tokens), max_model_len=chat.info.max_model_len)
        if request.prompt is None:
            raise bad_request("Give either prompt or messages.", "prompt")
        kind = self.scheduler.spec(request.model).kind  # checked before anything loads
        if kind not in _TOKENIZING_KINDS:
            raise bad_request(f"The model '{request.model}' is a {kind.value} model and has no tokenizer.", "model")
        engine = await resident_engine(self.scheduler, request.model, Engine)
        if not isinstance(engine, TextGenerationEngine | EmbeddingEngine):
            raise bad_request(f"The model '{request.model}' has no tokenizer.", "model")
        tokens = await run_in(
            WorkPool.ENGINE, engine.tokenize, request.prompt, add_special_tokens=request.add_special_tokens
        )
        return TokenizeResponse(tokens=tokens, count=len(tokens), max_model_len=engine.info.max_model_len)

    async def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        engine = await resident_engine(self.scheduler, request.model, TextGenerationEngine)
        check_token_ids(request.tokens, engine.info.vocab_size, "tokens")
        return DetokenizeResponse(prompt=await run_in(WorkPool.ENGINE, engine.detokenize, request.tokens))
