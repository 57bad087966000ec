from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.params import Parameter

from engines.scheduler import Scheduler
from schemas.v3.models import ModelList
from server.catalog import ModelCatalog
from server.routes.v3.model_listing import ModelFilter, list_models


def _flag(value: str | None) -> bool | None:
    return None if value in (None, "") else value.lower() in ("1", "true", "yes")


class ModelsV3Controller(Controller):
    path = "/v3/model"
    tags = ["v3: models"]

    @get(
        "",
        summary="List image checkpoints, LoRAs, embeddings, VAEs, ControlNets and upscalers",
        operation_id="listV3Models",
    )
    async def list_models(
        self,
        scheduler: Scheduler,
        catalog: ModelCatalog,
        visibility: Annotated[str | None, Parameter(query="filter.visibility")] = None,
        source: Annotated[str | None, Parameter(query="filter.source")] = None,
        types: Annotated[str | None, Parameter(query="filter.types")] = None,
        # novita-client sends the singular form.
        type_: Annotated[str | None, Parameter(query="filter.type")] = None,
        is_sdxl: Annotated[str | None, Parameter(query="filter.is_sdxl")] = None,
        is_inpainting: Annotated[str | None, Parameter(query="filter.is_inpainting")] = None,
        text: Annotated[str | None, Parameter(query="filter.query")] = None,
        limit: Annotated[int, Parameter(query="pagination.limit")] = 20,
        cursor: Annotated[str | None, Parameter(query="pagination.cursor")] = None,
    ) -> ModelList:
        wanted = ",".join(value for value in (types, type_) if value)
        filters = ModelFilter(
            visibility=visibility,
            source=source,
            types=[item.strip() for item in wanted.split(",") if item.strip()],
            is_sdxl=_flag(is_sdxl),
            is_inpainting=_flag(is_inpainting),
            query=text,
        )
        specs = [engine.spec for engine in scheduler.registry if catalog.listed(engine.spec.name)]
        return list_models(specs, filters, limit, cursor)
