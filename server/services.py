"""The services a request handler may use, built once per app."""

from __future__ import annotations

import time

from engines.base import ModelKind, TextGenerationEngine
from engines.residency import Residency
from engines.scheduler import Scheduler
from schemas.openai.models import ModelCard
from server.serving.chat import ChatService
from server.serving.completions import CompletionService
from server.serving.embeddings import EmbeddingService
from server.serving.images import ImageService
from server.serving.rerank import RerankService
from server.serving.tokenize import TokenizeService
from server.serving.transcriptions import TranscriptionService
from server.settings import AudioSettings, Limits, TaskSettings
from server.storage.local import LocalStorage


class Services:
    def __init__(
        self,
        scheduler: Scheduler,
        limits: Limits,
        *,
        storage: LocalStorage | None = None,
        url_ttl_s: int = TaskSettings().url_ttl_s,
        audio: AudioSettings | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.chat = ChatService(scheduler, limits)
        self.completions = CompletionService(scheduler, limits)
        self.embeddings = EmbeddingService(scheduler, limits)
        self.rerank = RerankService(scheduler, limits)
        self.tokenize = TokenizeService(scheduler)
        self.images = ImageService(scheduler, storage, limits, url_ttl_s=url_ttl_s)
        self.transcriptions = TranscriptionService(scheduler, audio or AudioSettings())
        self.started_at = int(time.time())

    def model_cards(self) -> list[ModelCard]:
        cards = []
        residency = self.scheduler.residency()
        for engine in self.scheduler.registry:
            spec = engine.spec
            max_len = None
            if spec.kind is ModelKind.CHAT and residency[spec.name] is Residency.RESIDENT:
                max_len = engine.info.max_model_len if isinstance(engine, TextGenerationEngine) else None
            for name in (spec.name, *spec.aliases):
                cards.append(ModelCard(id=name, created=self.started_at, max_model_len=max_len))
        return cards
