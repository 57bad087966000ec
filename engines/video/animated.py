"""SD 1.x checkpoints animated with an AnimateDiff motion adapter, as Novita's txt2video does: a
client names an image model of the catalog (one /v3/model lists) and gets a video from its
weights.

Each SD 1.x image model gets a video twin in the catalog, `<name>-animatediff`: the same folder
run as AnimateDiffPipeline with the motion adapter over it, and the image model's LoRAs and
embeddings. The video routes resolve an image model's name to its twin (`animates` names the
image model). The motion adapter: the `video.motion_adapter` setting, else the one of the
catalog's first AnimateDiff model (the demo catalog's demo-animatediff). No adapter, no twins.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engines.base import ModelKind, ModelSpec

ANIMATES = "animates"  # the option of a twin that names its image model
TWIN_SUFFIX = "-animatediff"
# Options of the adapter's own AnimateDiff model that belong to the adapter, not its checkpoint.
_ADAPTER_OPTIONS = ("context_frames",)


def _is_sd1(spec: ModelSpec) -> bool:
    """An SD 1.x text-to-image checkpoint (an SDXL, inpainting or other family UNet does not
    take SD 1.x motion modules)."""
    if spec.kind is not ModelKind.IMAGE or spec.options.get("inpainting"):
        return False
    if spec.options.get("architecture", "sd15") not in ("sd1", "sd15"):
        return False
    try:
        index = json.loads(Path(spec.path, "model_index.json").read_text())
    except (OSError, ValueError):
        return False
    return index.get("_class_name") == "StableDiffusionPipeline"


def animated_checkpoints(specs: list[ModelSpec], motion_adapter: str = "") -> list[ModelSpec]:
    """The video twins of the SD 1.x checkpoints in `specs` (see the module docstring). Blocking:
    reads each image model's model_index.json."""
    source = next((spec for spec in specs if spec.kind is ModelKind.VIDEO and spec.options.get("motion_adapter")), None)
    adapter = motion_adapter or (str(source.options["motion_adapter"]) if source else "")
    if not adapter:
        return []
    adapter_options: dict[str, Any] = {}
    if source is not None and not motion_adapter:
        adapter_options = {key: source.options[key] for key in _ADAPTER_OPTIONS if key in source.options}
    taken = {name for spec in specs for name in (spec.name, *spec.aliases)}
    twins = []
    for spec in specs:
        name = spec.name + TWIN_SUFFIX
        if name in taken or not _is_sd1(spec):
            continue
        options: dict[str, Any] = {
            "motion_adapter": adapter,
            ANIMATES: spec.name,
            **adapter_options,
            **{key: spec.options[key] for key in ("loras", "embeddings") if key in spec.options},
        }
        twins.append(ModelSpec(name=name, kind=ModelKind.VIDEO, engine="diffusers", path=spec.path, options=options))
    return twins
