"""The fuzz tests' server: every model kind in the catalog, each on a fake engine.

Every route reaches its capability; a request costs the HTTP and validation layers, not a model.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image

from engines.base import ModelKind, ModelSpec, ProgressCallback, VideoGeneration, VideoResult
from tests.fakes import FAKE_SAFETY_SPEC, FAKE_SPECS, FAKE_UPSCALER_SPEC, FakeFlowImageEngine, fake_factory
from tests.fakes_audio import FAKE_WHISPER_SPEC, FakeWhisperEngine
from tests.fakes_image_tools import FAKE_CAPTION_SPEC, FAKE_VARIATION_SPEC, fake_tools_factory
from tests.fakes_speech import FAKE_SPEECH_SPEC, FakeSpeechEngine
from tests.unit.test_image_editor import SEGMENTER, FakeSegmenter
from tests.unit.test_video_families import FamilyVideoEngine
from tests.unit.test_video_tasks import IMAGE_SPEC, TEXT_SPEC


class FlatVideoEngine(FamilyVideoEngine):
    """Frames of one flat colour: a fuzzed 1024x1024, 128-frame video encodes in a moment
    (random frames, as the unit tests' fake draws, take the encoder seconds). Its mode, frame
    rate and size follow the spec's pipeline class, as the diffusers engine's do."""

    async def generate(self, job: VideoGeneration, progress: ProgressCallback | None = None) -> VideoResult:
        self.jobs.append(job)
        if progress is not None:
            progress(1.0)
        frames = np.full((job.frame_count, job.height, job.width, 3), job.seed % 256, dtype=np.uint8)
        return VideoResult(frames=frames, seed=job.seed)


def _flow_spec(name: str, family: str, alias: str) -> ModelSpec:
    # Served by the fixed-model flow routes under Novita's model id, its alias.
    options = {"family": family}
    return ModelSpec(name=name, kind=ModelKind.IMAGE, engine="fake-flow", path="-", aliases=[alias], options=options)


def _family_video_spec(name: str, pipeline: str, alias: str) -> ModelSpec:
    # The pipeline class picks the family the fixed-model video routes ask for; 4 fps keeps
    # their 5-second clips at 21 frames.
    options = {"pipeline": pipeline, "fps": 4}
    return ModelSpec(name=name, kind=ModelKind.VIDEO, engine="fake-video", path="-", aliases=[alias], options=options)


FUZZ_SPECS: list[ModelSpec] = [
    *FAKE_SPECS,
    FAKE_SAFETY_SPEC,
    FAKE_UPSCALER_SPEC,
    FAKE_WHISPER_SPEC,
    FAKE_SPEECH_SPEC,
    TEXT_SPEC,
    IMAGE_SPEC,
    FAKE_CAPTION_SPEC,
    FAKE_VARIATION_SPEC,
    SEGMENTER,
    _flow_spec("fake-flux", "flux-schnell", "flux-1-schnell"),
    _flow_spec("fake-qwen-image", "qwen-image", "qwen-image"),
    _family_video_spec("fake-wan", "WanPipeline", "wan2.1-t2v"),
    _family_video_spec("fake-wan-i2v", "WanImageToVideoPipeline", "wan2.1-i2v"),
    _family_video_spec("fake-hunyuan", "HunyuanVideoPipeline", "hunyuan-video-fast"),
]
FACTORIES: dict[str, Any] = {
    "fake": fake_factory,
    "fake-whisper": FakeWhisperEngine,
    "fake-speech": FakeSpeechEngine,
    "fake-video": FlatVideoEngine,
    "fake-tools": fake_tools_factory,
    "fake-segmentation": FakeSegmenter,
    "fake-flow": FakeFlowImageEngine,
}
VOICES = sorted(FakeSpeechEngine.voice_pitch)
# Loopback with no keys: the server is open, so every body reaches its route's validation
# (the Stable Diffusion API's in-body key included). Request quotas are off, so a fuzzed
# burst is not answered with 429s; vendor generation is kept small so accepted requests
# stay cheap, and the Stable Diffusion API answers "processing" at once instead of waiting.
# Body limits are small so that a body over them is cheap to send.
MAX_BODY_BYTES = 2 * 1024 * 1024
SETTINGS: dict[str, Any] = {
    "limits": {"max_body_bytes": MAX_BODY_BYTES},
    "audio": {"max_upload_bytes": MAX_BODY_BYTES},
    "accounts": {"requests_per_hour": 0, "requests_per_day": 0},
    "vendor": {"novassium_steps": 1, "novassium_max_side": 64, "sdapi_wait_s": 0.0, "sdapi_fetch_timeout_s": 1.0},
    "tasks": {"workers": 2, "safety_model": FAKE_SAFETY_SPEC.name},
}


def tiny_png_base64(side: int = 128) -> str:
    """A valid image at the smallest side every image route accepts."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (30, 120, 200)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
