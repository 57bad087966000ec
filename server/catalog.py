"""The served catalog as OpenAI's model list: names, aliases, kinds, context length once loaded."""

from __future__ import annotations

import time
from typing import cast

from engines.base import AdapterEngine, ModelKind, TextGenerationEngine
from engines.residency import Residency
from engines.scheduler import Scheduler
from schemas.errors import ApiError, ErrorCode
from schemas.openai.models import ModelCard, ModelKindName
from server.cluster import ClusterCatalog


class ModelCatalog:
    def __init__(self, scheduler: Scheduler, cluster: ClusterCatalog | None = None) -> None:
        self.scheduler = scheduler
        # Lists only the models some live replica runs (all of them on one server by default).
        self.cluster = cluster
        self.started_at = int(time.time())

    def listed(self, name: str) -> bool:
        """Whether the catalog model `name` (canonical) is listed: some live replica runs it."""
        return self.cluster is None or bool(self.cluster.serving(name))

    def cards(self) -> list[ModelCard]:
        cards = []
        residency = self.scheduler.residency()
        for engine in self.scheduler.registry:
            spec = engine.spec
            if not self.listed(spec.name):
                continue
            max_len = None
            # Only a loaded chat model knows its context length; nothing is loaded to learn it.
            if spec.kind is ModelKind.CHAT and residency[spec.name] is Residency.RESIDENT:
                max_len = engine.info.max_model_len if isinstance(engine, TextGenerationEngine) else None
            for name in (spec.name, *spec.aliases):
                cards.append(
                    ModelCard(
                        id=name,
                        created=self.started_at,
                        kind=cast(ModelKindName, spec.kind.value),
                        max_model_len=max_len,
                    )
                )
            if isinstance(engine, AdapterEngine):
                # `root` names the adapter, not its folder: no server path reaches a client.
                cards.extend(
                    ModelCard(
                        id=adapter.name,
                        created=self.started_at,
                        kind=cast(ModelKindName, spec.kind.value),
                        max_model_len=max_len,
                        parent=spec.name,
                        root=adapter.name,
                    )
                    for adapter in engine.adapters()
                )
        return cards

    def card(self, name: str) -> ModelCard:
        for card in self.cards():
            if card.id == name:
                return card
        raise ApiError(ErrorCode.MODEL_NOT_FOUND, f"The model '{name}' does not exist.", param="model")
