"""GET /v3/model: the image catalog (checkpoints, LoRAs, embeddings, VAEs, ControlNets, upscalers)
and the video models, with Novita's filters and cursor pagination (``c_<offset>``)."""

from __future__ import annotations

import zlib
from pathlib import Path

import msgspec

from engines.base import ModelKind, ModelSpec
from engines.image.families import RULES, spec_family
from engines.video.animated import ANIMATES
from engines.video.families import base_model as video_base_model
from schemas.errors import ApiError, ErrorCode
from schemas.v3.models import ModelInfo, ModelList, ModelType, Pagination

MAX_PAGE = 100
_DISPLAY = {
    "checkpoint": "Checkpoint",
    "lora": "LoRA",
    "textualinversion": "Embedding",
    "vae": "VAE",
    "controlnet": "ControlNet",
    "upscaler": "Upscaler",
    # Novita's model list has no video type; video models are listed under this one, so a client
    # filtering for checkpoints never sees a model that txt2img would refuse.
    "video": "Video",
}


class ModelFilter(msgspec.Struct, kw_only=True):
    visibility: str | None = None
    source: str | None = None
    types: list[str] = []
    is_sdxl: bool | None = None
    is_inpainting: bool | None = None
    query: str | None = None


def _stable_id(name: str) -> int:
    # Integers, as clients parse them; stable across restarts for the same name.
    return zlib.crc32(name.encode())


def _is_sdxl(spec: ModelSpec) -> bool:
    if spec.options.get("architecture") == "sdxl":
        return True
    index = Path(spec.path) / "model_index.json"
    return index.is_file() and "StableDiffusionXL" in index.read_text()


def _entries(specs: list[ModelSpec]) -> list[tuple[ModelInfo, bool, bool]]:
    """(info, is_sdxl, is_inpainting) for every listable item, in catalog order."""
    entries = []
    for spec in specs:
        if spec.kind is ModelKind.UPSCALER:
            upscaler = ModelInfo(
                id=_stable_id(spec.name), name=spec.name, sd_name=spec.name, sd_name_in_api=spec.name,
                type=ModelType(name="upscaler", display_name=_DISPLAY["upscaler"]),
            )  # fmt: skip
            entries.append((upscaler, False, False))
            continue
        if spec.kind is ModelKind.VIDEO:
            # An SD checkpoint's AnimateDiff twin is listed as the checkpoint it animates.
            if ANIMATES not in spec.options:
                video = ModelInfo(
                    id=_stable_id(spec.name), name=spec.name, sd_name=spec.name, sd_name_in_api=spec.name,
                    type=ModelType(name="video", display_name=_DISPLAY["video"]), base_model=video_base_model(spec),
                )  # fmt: skip
                entries.append((video, False, False))
            continue
        if spec.kind is not ModelKind.IMAGE:
            continue
        family = spec_family(spec)
        sdxl = family is None and _is_sdxl(spec)
        base = RULES[family].base_model if family is not None else "SDXL 1.0" if sdxl else "SD 1.5"
        inpainting = bool(spec.options.get("inpainting", False))
        checkpoint = ModelInfo(
            id=_stable_id(spec.name), name=spec.name, sd_name=spec.name, sd_name_in_api=spec.name,
            type=ModelType(name="checkpoint", display_name=_DISPLAY["checkpoint"]), base_model=base,
        )  # fmt: skip
        entries.append((checkpoint, sdxl, inpainting))
        for kind, names in (
            ("lora", spec.options.get("loras", {})),
            ("textualinversion", spec.options.get("embeddings", {})),
            ("vae", spec.options.get("vaes", {})),
            ("controlnet", spec.options.get("controlnets", {})),
        ):
            for name in names:
                info = ModelInfo(
                    id=_stable_id(f"{spec.name}/{name}"), name=name, sd_name=name, sd_name_in_api=name,
                    type=ModelType(name=kind, display_name=_DISPLAY[kind]), base_model=base,
                )  # fmt: skip
                entries.append((info, sdxl, False))
    return entries


def parse_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    if not cursor.startswith("c_") or not cursor[2:].isdigit():
        raise ApiError(
            ErrorCode.INVALID_REQUEST_BODY, "pagination.cursor must look like c_<offset>.", param="pagination.cursor"
        )
    return int(cursor[2:])


def list_models(specs: list[ModelSpec], filters: ModelFilter, limit: int, cursor: str | None) -> ModelList:
    if not 1 <= limit <= MAX_PAGE:
        raise ApiError(
            ErrorCode.INVALID_REQUEST_BODY,
            f"pagination.limit must be between 1 and {MAX_PAGE}.",
            param="pagination.limit",
        )
    offset = parse_cursor(cursor)
    if filters.visibility not in (None, "", "public"):
        return ModelList(models=[], pagination=Pagination(next_cursor=""))  # nothing here is private to a user
    matched = []
    for info, sdxl, inpainting in _entries(specs):
        if filters.types and info.type.name not in filters.types:
            continue
        if filters.source not in (None, "", info.source):
            continue
        if filters.is_sdxl is not None and filters.is_sdxl != sdxl:
            continue
        if filters.is_inpainting is not None and filters.is_inpainting != inpainting:
            continue
        if filters.query and filters.query.lower() not in info.name.lower():
            continue
        matched.append(info)
    page = matched[offset : offset + limit]
    next_offset = offset + len(page)
    return ModelList(
        models=page, pagination=Pagination(next_cursor=f"c_{next_offset}" if next_offset < len(matched) else "")
    )
