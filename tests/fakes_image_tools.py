"""Fake captioner and variation engines for unit tests of /v3 img2prompt and reimagine."""

from __future__ import annotations

import io
from typing import Any

from engines.base import Caption, ModelKind, ModelSpec, ProgressCallback, VariationJob

FAKE_CAPTION_SPEC = ModelSpec(name="fake-captioner", kind=ModelKind.CAPTION, engine="fake-tools", path="-")
FAKE_VARIATION_SPEC = ModelSpec(name="fake-reimagine", kind=ModelKind.VARIATION, engine="fake-tools", path="-")


class _FakeToolBase:
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.loaded = False
        self.calls = 0

    async def load(self) -> None:
        self.loaded = True

    async def unload(self) -> None:
        self.loaded = False

    def memory_bytes(self) -> int:
        return 1

    async def health(self) -> bool:
        return self.loaded


class FakeCaptionEngine(_FakeToolBase):
    """Words about what it was given: the image's size and its mean colour."""

    async def caption(self, image: Any) -> Caption:
        from PIL import ImageStat

        self.calls += 1
        red, green, blue = (round(v) for v in ImageStat.Stat(image.convert("RGB")).mean)
        text = f"a {image.width}x{image.height} picture of rgb {red} {green} {blue}"
        return Caption(text=text, generated_tokens=len(text.split()))


class FakeVariationEngine(_FakeToolBase):
    """The input's colours inverted and shifted by the seed: of its size, different per seed."""

    last_job: VariationJob | None = None

    async def vary(self, job: VariationJob, progress: ProgressCallback | None = None) -> Any:
        from PIL import Image, ImageOps

        self.calls += 1
        self.last_job = job
        with Image.open(io.BytesIO(job.image)) as image:
            inverted = ImageOps.invert(image.convert("RGB"))
        shift = job.seed % 256
        if progress is not None:
            progress(1.0)
        return inverted.point(lambda value: (value + shift) % 256)


def fake_tools_factory(spec: ModelSpec) -> Any:
    return {ModelKind.CAPTION: FakeCaptionEngine, ModelKind.VARIATION: FakeVariationEngine}[spec.kind](spec)
