"""Text: chat, completions, embeddings, rerank and score, classify and pooling, tokenize, on vLLM engines."""

from __future__ import annotations

from engines.scheduler import Scheduler
from server.capabilities.text.chat import ChatService
from server.capabilities.text.chat_images import ChatImages
from server.capabilities.text.chat_turns import ChatTurns
from server.capabilities.text.completions import CompletionService
from server.capabilities.text.embeddings import EmbeddingService
from server.capabilities.text.pooling import PoolingService
from server.capabilities.text.rerank import RerankService
from server.capabilities.text.templates import TemplateRenderer
from server.capabilities.text.tokenize import TokenizeService
from server.outbound import OutboundHttp
from server.settings import Limits


class TextCapability:
    """The text services over one scheduler and one set of limits."""

    def __init__(self, scheduler: Scheduler, limits: Limits, outbound: OutboundHttp | None = None) -> None:
        # One renderer, so that its cap on client templates holds for every route.
        templates = TemplateRenderer(limits)
        # Chat images by URL are fetched through the server's outbound path (none: data URLs only).
        self.chat = ChatService(scheduler, limits, templates, ChatImages(limits, outbound))
        # The same chat, for adapters of other API families (Anthropic's Messages API).
        self.turns = ChatTurns(scheduler, limits, templates)
        self.completions = CompletionService(scheduler, limits)
        self.embeddings = EmbeddingService(scheduler, limits)
        self.rerank = RerankService(scheduler, limits)
        self.pooling = PoolingService(scheduler, limits)
        self.tokenize = TokenizeService(scheduler, templates)
