"""Placeholder: the video demo models are added here."""

from __future__ import annotations

from pathlib import Path

from engines.base import ModelSpec


def video_demo_catalog(root: Path) -> list[ModelSpec]:
    return []


def build_video_demo_models(root: Path, *, force: bool = False) -> list[ModelSpec]:
    return video_demo_catalog(root)
