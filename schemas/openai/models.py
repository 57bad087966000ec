from __future__ import annotations

from typing import Literal

import msgspec

# What a model serves: omniserve's catalog kinds (engines/base.py ModelKind).
ModelKindName = Literal[
    "chat",
    "embedding",
    "rerank",
    "image",
    "safety",
    "upscaler",
    "segmentation",
    "transcription",
    "speech",
    "video",
    "caption",
    "variation",
]


class ModelCard(msgspec.Struct, kw_only=True):
    id: str
    created: int
    # omniserve's own field (OpenAI's card has none), so a client can pick a model for a task.
    kind: ModelKindName
    owned_by: str = "omniserve"
    object: Literal["model"] = "model"
    max_model_len: int | None = None
    # A LoRA adapter's card: the model it adapts, and (where vLLM puts the folder) its name.
    parent: str | None = None
    root: str | None = None


class ModelList(msgspec.Struct, kw_only=True):
    data: list[ModelCard]
    object: Literal["list"] = "list"
