from __future__ import annotations

from typing import Literal

import msgspec


class ModelCard(msgspec.Struct, kw_only=True):
    id: str
    created: int
    owned_by: str = "omniserve"
    object: Literal["model"] = "model"
    max_model_len: int | None = None
    # A LoRA adapter's card, as vLLM writes it: the model it adapts, and the adapter's folder.
    parent: str | None = None
    root: str | None = None


class ModelList(msgspec.Struct, kw_only=True):
    data: list[ModelCard]
    object: Literal["list"] = "list"
