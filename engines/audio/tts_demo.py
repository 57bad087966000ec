"""Placeholder: the tts demo models are added here."""

from __future__ import annotations

from pathlib import Path

from engines.base import ModelSpec


def tts_demo_catalog(root: Path) -> list[ModelSpec]:
    return []


def build_tts_demo_models(root: Path, *, force: bool = False) -> list[ModelSpec]:
    return tts_demo_catalog(root)
