from __future__ import annotations

from litestar import Controller, get

from schemas.openai.models import ModelCard, ModelList
from server.catalog import ModelCatalog
from server.routes.openapi import operation_id


class ModelsController(Controller):
    path = "/models"
    tags = ["openai: models"]

    @get("", summary="List models", operation_id=operation_id("listModels"))
    async def list_models(self, catalog: ModelCatalog) -> ModelList:
        return ModelList(data=catalog.cards())

    @get("/{model_id:path}", summary="Retrieve a model", operation_id=operation_id("retrieveModel"))
    async def get_model(self, model_id: str, catalog: ModelCatalog) -> ModelCard:
        return catalog.card(model_id.lstrip("/"))
