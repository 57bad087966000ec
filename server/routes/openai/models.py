from __future__ import annotations

from litestar import Controller, get

from schemas.errors import ApiError, ErrorCode
from schemas.openai.models import ModelCard, ModelList
from server.services import Services


class ModelsController(Controller):
    path = "/models"
    tags = ["openai: models"]

    @get("", summary="List models")
    async def list_models(self, services: Services) -> ModelList:
        return ModelList(data=services.model_cards())

    @get("/{model_id:path}", summary="Retrieve a model")
    async def get_model(self, model_id: str, services: Services) -> ModelCard:
        name = model_id.lstrip("/")
        for card in services.model_cards():
            if card.id == name:
                return card
        raise ApiError(ErrorCode.MODEL_NOT_FOUND, f"The model '{name}' does not exist.", param="model")
