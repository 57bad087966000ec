"""UnclipVariationEngine: diffusers' Stable unCLIP image-to-image behind the VariationEngine protocol.

The pipeline embeds the input image with its CLIP vision tower and denoises a fresh image
conditioned on that embedding, not on the input's pixels: the result shares the input's
subject, style and colours but not its layout. stabilityai/stable-diffusion-2-1-unclip-small
(CLIP ViT-L/14 image embeddings) and stabilityai/stable-diffusion-2-1-unclip (ViT-H/14) are
such pipelines.

The variation is drawn at the input's size rounded down to the VAE's grid (at least one cell)
and resized back to exactly the input's size. Catalog options (the real checkpoints' defaults):

- `steps` (20): denoising steps;
- `guidance_scale` (10.0): classifier-free guidance; 1 or less runs a single branch;
- `noise_level` (0): noise added to the image embedding; higher departs further from the input;
- `prompt` (""): text that steers every variation besides the image.

Jobs run on a worker thread in the scheduler's device turns (a DeviceSerialEngine), like the
image pipelines; noise comes from a CPU generator seeded with the job's seed, so the same job
and seed give the same pixels on one machine.
"""

from __future__ import annotations

import functools
import io
import logging
import threading
from typing import Any, Literal

from engines.base import ModelSpec, ProgressCallback, VariationJob
from engines.errors import InvalidJob, JobProblem
from engines.image.devices import pipeline_bytes, release_memory
from engines.registry import CatalogError
from engines.threads import run_cancellable
from engines.workpools import WorkPool, run_in

log = logging.getLogger("omniserve.engines.variation")

DEFAULT_STEPS = 20
DEFAULT_GUIDANCE_SCALE = 10.0


class _Cancelled(Exception):
    """Raised from the step callback to stop a job whose caller has gone away."""


class VariationSettings:
    """The catalog entry's options, checked when the engine is made (a mistake fails at startup)."""

    def __init__(self, spec: ModelSpec) -> None:
        options = spec.options
        steps = options.get("steps", DEFAULT_STEPS)
        guidance = options.get("guidance_scale", DEFAULT_GUIDANCE_SCALE)
        noise_level = options.get("noise_level", 0)
        prompt = options.get("prompt", "")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise CatalogError(f"model {spec.name}: options.steps must be a positive whole number")
        if not isinstance(guidance, (int, float)) or isinstance(guidance, bool) or guidance < 0:
            raise CatalogError(f"model {spec.name}: options.guidance_scale must be a number of at least 0")
        if not isinstance(noise_level, int) or isinstance(noise_level, bool) or noise_level < 0:
            raise CatalogError(f"model {spec.name}: options.noise_level must be a whole number of at least 0")
        if not isinstance(prompt, str):
            raise CatalogError(f"model {spec.name}: options.prompt must be a string")
        self.steps = steps
        self.guidance_scale = float(guidance)
        self.noise_level = noise_level
        self.prompt = prompt


def _decode(data: bytes) -> Any:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
        raise InvalidJob("image is not a readable PNG, JPEG or WebP image", "image", JobProblem.IMAGE_FORMAT) from exc


def grid_size(width: int, height: int, factor: int) -> tuple[int, int]:
    """The size a variation is drawn at: each side rounded down to a multiple of `factor`, at least one."""
    return max(factor, width // factor * factor), max(factor, height // factor * factor)


class UnclipVariationEngine:
    """One StableUnCLIPImg2ImgPipeline checkpoint (a diffusers folder)."""

    device_serial: Literal[True] = True  # one job at a time on the device (DeviceSerialEngine)

    def __init__(self, spec: ModelSpec, *, device: str = "cpu") -> None:
        self.spec = spec
        self.device = device
        self.settings = VariationSettings(spec)
        self._pipe: Any = None

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    async def load(self) -> None:
        if self._pipe is None:
            self._pipe = await run_in(WorkPool.ENGINE, self._load_pipeline)

    def _load_pipeline(self) -> Any:
        import torch
        from diffusers import StableUnCLIPImg2ImgPipeline

        # Half precision only where kernels for it exist; CPU runs float32.
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        log.info("loading variation pipeline %s with diffusers", self.spec.name)
        pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(self.spec.path, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)  # progress goes to the callback, not to stderr
        return pipe.to(self.device)

    async def unload(self) -> None:
        self._pipe = None
        release_memory(self.device)

    def memory_bytes(self) -> int:
        if self._pipe is None:
            return self.spec.memory_bytes
        return pipeline_bytes(self._pipe)

    async def health(self) -> bool:
        return self._pipe is not None

    async def vary(self, job: VariationJob, progress: ProgressCallback | None = None) -> Any:
        """A variation of `job.image` (PIL), of exactly its size."""
        if self._pipe is None:
            raise RuntimeError(f"model {self.spec.name} is not loaded")
        return await run_cancellable(functools.partial(self._run, job, progress))

    def _run(self, job: VariationJob, progress: ProgressCallback | None, cancelled: threading.Event) -> Any:
        import torch
        from PIL import Image

        image = _decode(job.image)
        settings = self.settings
        width, height = grid_size(image.width, image.height, int(self._pipe.vae_scale_factor))

        def on_step(step: int, timestep: Any, latents: Any) -> None:
            if cancelled.is_set():
                raise _Cancelled
            if progress is not None:
                progress(min(1.0, (step + 1) / settings.steps))

        # A cancelled job ends in _Cancelled, which run_cancellable discards with the caller gone.
        result = self._pipe(
            image=image,
            prompt=settings.prompt,
            width=width,
            height=height,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            noise_level=settings.noise_level,
            generator=torch.Generator("cpu").manual_seed(job.seed),
            callback=on_step,
            callback_steps=1,
            output_type="pil",
        )
        variation = result.images[0]
        size = image.size
        return variation if variation.size == size else variation.resize(size, Image.Resampling.LANCZOS)
