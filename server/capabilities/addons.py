"""What image and video jobs share: the LoRAs and textual-inversion embeddings a checkpoint's
catalog entry lists (engines/image/addons.py loads them), refused by name when unknown."""

from __future__ import annotations

from engines.base import LoraWeight, ModelSpec
from server.capabilities.calls import WireNames


def check_addons(spec: ModelSpec, loras: list[LoraWeight], embeddings: list[str], names: WireNames) -> None:
    options = spec.options
    for lora in loras:
        if lora.name not in options.get("loras", {}):
            raise names.invalid("loras", f"Unknown LoRA '{lora.name}'.")
    for embedding in embeddings:
        if embedding not in options.get("embeddings", {}):
            raise names.invalid("embeddings", f"Unknown embedding '{embedding}'.")
