"""LoRAs and textual-inversion embeddings on a diffusers pipeline, shared by the image and video
engines. Both load each adapter once, on first use, from the paths the checkpoint's catalog entry
names (`options.loras`, `options.embeddings`), and keep it until the checkpoint unloads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engines.base import LoraWeight


def activate_loras(pipe: Any, loaded: set[str], paths: Mapping[str, str], loras: Sequence[LoraWeight]) -> None:
    """Make exactly `loras`, at their strengths, the active adapters of `pipe`."""
    if not loras:
        if loaded:  # adapters live in the shared modules; switch them off for this job
            pipe.disable_lora()
        return
    for lora in loras:
        if lora.name not in loaded:
            pipe.load_lora_weights(paths[lora.name], adapter_name=lora.name)
            loaded.add(lora.name)
    pipe.enable_lora()
    pipe.set_adapters([lora.name for lora in loras], adapter_weights=[lora.strength for lora in loras])


def add_embeddings(pipe: Any, loaded: set[str], paths: Mapping[str, str], names: Sequence[str]) -> None:
    # Added once and kept: the token only means something when a prompt uses it.
    for name in names:
        if name not in loaded:
            pipe.load_textual_inversion(paths[name], token=name)
            loaded.add(name)
