"""Placeholder: the stt demo models are added here."""

from __future__ import annotations

from pathlib import Path

from engines.base import ModelSpec


def stt_demo_catalog(root: Path) -> list[ModelSpec]:
    return []


def build_stt_demo_models(root: Path, *, force: bool = False) -> list[ModelSpec]:
    return stt_demo_catalog(root)
