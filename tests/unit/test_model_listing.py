from __future__ import annotations

import pytest

from engines.base import ModelKind, ModelSpec
from schemas.errors import ApiError
from server.routes.v3.model_listing import ModelFilter, list_models

SPECS = [
    ModelSpec(name="chat", kind=ModelKind.CHAT, path="-"),
    ModelSpec(
        name="sd15",
        kind=ModelKind.IMAGE,
        engine="diffusers",
        path="-",
        options={"loras": {"detail": "-", "style": "-"}, "embeddings": {"badhand": "-"}},
    ),
    ModelSpec(name="xl", kind=ModelKind.IMAGE, engine="diffusers", path="-", options={"architecture": "sdxl"}),
    ModelSpec(name="x4", kind=ModelKind.UPSCALER, engine="diffusers", path="-"),
]


def names(**filters: object) -> list[str]:
    return [model.name for model in list_models(SPECS, ModelFilter(**filters), 100, None).models]  # type: ignore[arg-type]


def test_lists_image_items_only_with_types() -> None:
    result = list_models(SPECS, ModelFilter(), 100, None)
    assert [(m.name, m.type.name) for m in result.models] == [
        ("sd15", "checkpoint"),
        ("detail", "lora"),
        ("style", "lora"),
        ("badhand", "textualinversion"),
        ("xl", "checkpoint"),
        ("x4", "upscaler"),
    ]
    assert result.pagination.next_cursor == ""


def test_filters() -> None:
    assert names(types=["lora"]) == ["detail", "style"]
    assert names(types=["checkpoint"], is_sdxl=True) == ["xl"]
    assert names(types=["checkpoint"], is_sdxl=False) == ["sd15"]
    assert names(query="HAND") == ["badhand"]
    assert names(visibility="private") == []


def test_cursor_pagination_walks_everything_once() -> None:
    seen, cursor = [], None
    while True:
        page = list_models(SPECS, ModelFilter(), 2, cursor)
        seen += [model.name for model in page.models]
        cursor = page.pagination.next_cursor
        if not cursor:
            break
    assert seen == ["sd15", "detail", "style", "badhand", "xl", "x4"]


def test_bad_paging_is_a_named_400() -> None:
    with pytest.raises(ApiError) as limit:
        list_models(SPECS, ModelFilter(), 101, None)
    assert limit.value.param == "pagination.limit"
    with pytest.raises(ApiError) as cursor:
        list_models(SPECS, ModelFilter(), 10, "page2")
    assert cursor.value.param == "pagination.cursor"


def test_vaes_and_controlnets_are_listed_with_their_types() -> None:
    specs = [
        ModelSpec(
            name="sd15",
            kind=ModelKind.IMAGE,
            engine="diffusers",
            path="-",
            options={"vaes": {"vae-ft-mse": "-"}, "controlnets": {"canny": "-", "tile": "-"}, "refiner": "-"},
        ),
    ]
    listed = list_models(specs, ModelFilter(), 100, None).models
    assert [(m.name, m.type.name, m.type.display_name) for m in listed] == [
        ("sd15", "checkpoint", "Checkpoint"),
        ("vae-ft-mse", "vae", "VAE"),
        ("canny", "controlnet", "ControlNet"),
        ("tile", "controlnet", "ControlNet"),
    ]
    assert [m.name for m in list_models(specs, ModelFilter(types=["vae"]), 100, None).models] == ["vae-ft-mse"]
    assert all(m.base_model == "SD 1.5" for m in listed)


def test_video_models_are_listed_with_their_family_as_base_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    wan22 = tmp_path / "wan22"
    wan22.mkdir()
    index = {"_class_name": "WanPipeline", "transformer": ["diffusers", "X"], "transformer_2": ["diffusers", "X"]}
    (wan22 / "model_index.json").write_text(json.dumps(index))
    ltx = tmp_path / "ltx"
    ltx.mkdir()
    (ltx / "model_index.json").write_text(json.dumps({"_class_name": "LTXPipeline"}))
    specs = [
        *SPECS,
        ModelSpec(name="wan", kind=ModelKind.VIDEO, engine="diffusers", path=str(wan22)),
        ModelSpec(name="ltx", kind=ModelKind.VIDEO, engine="diffusers", path=str(ltx)),
        ModelSpec(name="mine", kind=ModelKind.VIDEO, engine="diffusers", path=str(ltx), options={"base_model": "X 1"}),
        # An SD checkpoint's AnimateDiff twin: already listed as its checkpoint.
        ModelSpec(
            name="sd15-animatediff", kind=ModelKind.VIDEO, engine="diffusers", path="-", options={"animates": "sd15"}
        ),
    ]
    videos = list_models(specs, ModelFilter(types=["video"]), 100, None).models
    assert [(m.name, m.type.display_name, m.base_model) for m in videos] == [
        ("wan", "Video", "Wan 2.2"),
        ("ltx", "Video", "LTX-Video"),
        ("mine", "Video", "X 1"),
    ]
    checkpoints = list_models(specs, ModelFilter(types=["checkpoint"]), 100, None).models
    assert [m.name for m in checkpoints] == ["sd15", "xl"]
