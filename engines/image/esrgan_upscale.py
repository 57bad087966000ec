"""EsrganUpscalerEngine: an ESRGAN-family upscaler (RealESRGAN_x4plus, the anime 6B, 4x-UltraSharp...)
behind the UpscaleEngine protocol.

The network (engines/image/esrgan.py) enlarges by its native factor (4 for the x4 models); the
result is then resized with Lanczos to exactly the requested size, as the SD x4 upscaler's is.
It runs in float32 (fp16 RRDBNet kernels are not what CPUs have), on a worker thread in the
scheduler's device turns like every image model (the engine is a DeviceSerialEngine).

Memory grows with the output's area times the network's width (64 channels at 4x the input's
size for the real models), so inputs are cut into tiles of options.tile_size input pixels a side
(192 by default), each run with options.tile_pad pixels of context around it (16): only the
tile's own share of the output is kept, so no seam shows. Progress and cancellation are per tile.
"""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path
from typing import Any, Literal

from engines.base import ModelSpec, ProgressCallback, UpscaleJob, upscaled_size
from engines.errors import InvalidJob
from engines.image.devices import parameter_bytes, release_memory
from engines.image.esrgan import load_rrdbnet, upscale_tensor, weights_file
from engines.image.upscale import decode_input
from engines.threads import run_cancellable
from engines.workpools import WorkPool, run_in

log = logging.getLogger("omniserve.engines.esrgan")

DEFAULT_TILE_SIZE = 192
DEFAULT_TILE_PAD = 16


class _Cancelled(Exception):
    """Raised between tiles to stop a job whose caller has gone away."""


def image_to_tensor(image: Any, device: str) -> Any:
    """A PIL RGB image as a (1, 3, H, W) float32 tensor in [0, 1]."""
    import numpy as np
    import torch

    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    return pixels.permute(2, 0, 1).unsqueeze(0).to(device)


def bytes_to_image(tensor: Any) -> Any:
    """A (1, 3, H, W) uint8 tensor as a PIL RGB image."""
    from PIL import Image

    return Image.fromarray(tensor[0].permute(1, 2, 0).contiguous().numpy())


def esrgan_upscale(
    net: Any,
    image: Any,
    *,
    device: str,
    tile: int = DEFAULT_TILE_SIZE,
    pad: int = DEFAULT_TILE_PAD,
    on_tile: Any = None,
) -> Any:
    """A PIL RGB image through `net` at its native scale, tiled. Blocking."""
    pixels = upscale_tensor(net, image_to_tensor(image, device), tile=tile, pad=pad, on_tile=on_tile, as_bytes=True)
    return bytes_to_image(pixels)


class EsrganUpscalerEngine:
    """One RRDBNet weights file (or a folder holding one)."""

    device_serial: Literal[True] = True  # one job at a time on the device (DeviceSerialEngine)

    def __init__(self, spec: ModelSpec, *, device: str = "cpu") -> None:
        self.spec = spec
        self.device = device
        self._net: Any = None

    @property
    def loaded(self) -> bool:
        return self._net is not None

    @property
    def native_scale(self) -> int:
        if self._net is None:
            raise RuntimeError(f"model {self.spec.name} is not loaded")
        return int(self._net.config.scale)

    async def load(self) -> None:
        if self._net is None:
            self._net = await run_in(WorkPool.ENGINE, self._load_net)

    def _load_net(self) -> Any:
        path = weights_file(Path(self.spec.path))
        net = load_rrdbnet(path, device=self.device)
        config = net.config
        log.info(
            "loaded ESRGAN upscaler %s: x%d, %d blocks of %d features",
            self.spec.name,
            config.scale,
            config.num_block,
            config.num_feat,
        )
        return net

    async def unload(self) -> None:
        self._net = None
        release_memory(self.device)

    def memory_bytes(self) -> int:
        if self._net is None:
            return self.spec.memory_bytes
        return parameter_bytes([self._net])

    async def health(self) -> bool:
        return self._net is not None

    async def upscale(self, job: UpscaleJob, progress: ProgressCallback | None = None) -> Any:
        """`job.image` upscaled to exactly upscaled_size(its size, job.scale), as a PIL image."""
        if self._net is None:
            raise RuntimeError(f"model {self.spec.name} is not loaded")
        if not job.scale > 0:
            raise InvalidJob("scale must be positive", "scale")
        return await run_cancellable(functools.partial(self._run, job, progress))

    def _run(self, job: UpscaleJob, progress: ProgressCallback | None, cancelled: threading.Event) -> Any:
        from PIL import Image

        image = decode_input(job.image)
        size = upscaled_size(image.width, image.height, job.scale)

        def on_tile(done: int, total: int) -> None:
            if cancelled.is_set():
                raise _Cancelled
            if progress is not None:
                progress(done / total)

        options = self.spec.options
        native = esrgan_upscale(
            self._net,
            image,
            device=self.device,
            tile=int(options.get("tile_size", DEFAULT_TILE_SIZE)),
            pad=int(options.get("tile_pad", DEFAULT_TILE_PAD)),
            on_tile=on_tile,
        )
        return native if native.size == size else native.resize(size, Image.Resampling.LANCZOS)
