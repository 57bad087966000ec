"""The audio part of the demo catalog: a tiny random Whisper and the real Whisper base for
speech to text, and a tiny random multi-speaker VITS for text to speech."""

from __future__ import annotations

from pathlib import Path

from engines.base import ModelSpec


def audio_demo_catalog(root: Path) -> list[ModelSpec]:
    from engines.audio.stt_demo import stt_demo_catalog
    from engines.audio.tts_demo import tts_demo_catalog

    return stt_demo_catalog(root) + tts_demo_catalog(root)


def build_audio_demo_models(root: Path, *, force: bool = False) -> list[ModelSpec]:
    """Build missing (or, with `force`, all) audio demo models under `root`; return the specs."""
    from engines.audio.stt_demo import build_stt_demo_models
    from engines.audio.tts_demo import build_tts_demo_models

    return build_stt_demo_models(root, force=force) + build_tts_demo_models(root, force=force)
