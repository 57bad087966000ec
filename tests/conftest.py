from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a model hub: a missing local file must fail at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo catalog, built once per test session."""
    from engines.audio.demo import build_audio_demo_models
    from engines.demo import build_demo_models
    from engines.image.demo import build_image_demo_models
    from engines.video.demo import build_video_demo_models
    from engines.vision_demo import build_vision_demo_models

    root = tmp_path_factory.mktemp("demo-models")
    build_demo_models(root)
    build_image_demo_models(root)
    build_audio_demo_models(root)
    build_video_demo_models(root)
    build_vision_demo_models(root)
    return root
