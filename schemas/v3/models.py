"""GET /v3/model."""

from __future__ import annotations

import msgspec


class ModelType(msgspec.Struct, kw_only=True):
    name: str
    display_name: str


class ModelInfo(msgspec.Struct, kw_only=True):
    id: int
    name: str
    sd_name: str
    sd_name_in_api: str
    type: ModelType
    status: int = 1  # available
    base_model: str = ""
    source: str = "local"
    visibility: str = "public"
    is_nsfw: bool = False
    categories: list[str] = []


class Pagination(msgspec.Struct, kw_only=True):
    next_cursor: str


class ModelList(msgspec.Struct, kw_only=True):
    models: list[ModelInfo]
    pagination: Pagination
