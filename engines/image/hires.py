"""The upscale step between the two passes of txt2img's hires fix.

A1111's hires fix draws the picture at the base size, enlarges it, and denoises the enlarged
picture again with img2img so that the new pixels get detail of their own. Novita's
`hires_fix.upscaler` names how the picture is enlarged:

- "Latent": the latents themselves, bilinearly (A1111's "Latent"); no VAE round trip.
- "RealESRGAN_x4plus_anime_6B", "RealESRNet_x4plus": ESRGAN models. Where the checkpoint's
  catalog entry maps the name to a weights file (options.upscalers, {name: path to a .pth or
  .safetensors RRDBNet}), the decoded picture goes through that network (engines/image/esrgan.py)
  and is resized with Lanczos to the target; without such an entry it is resized with Lanczos
  alone, in image space as ESRGAN works, and the second pass adds the detail.
- Any other name options.upscalers maps (A1111 names such as "4x-UltraSharp"): that network.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

LATENT_UPSCALER = "Latent"
IMAGE_UPSCALERS = ("RealESRGAN_x4plus_anime_6B", "RealESRNet_x4plus")
HIRES_UPSCALERS = (LATENT_UPSCALER, *IMAGE_UPSCALERS)


def hires_upscalers(options: dict[str, Any]) -> tuple[str, ...]:
    """The upscaler names a checkpoint's hires fix takes: Novita's, then those its options.upscalers adds."""
    mapped = options.get("upscalers") or {}
    return (*HIRES_UPSCALERS, *(name for name in mapped if name not in HIRES_UPSCALERS))


def upscale_latents(latents: Any, size: tuple[int, int], vae_scale_factor: int) -> Any:
    """Latents (batch, channels, h, w) resized for an image of `size` (width, height)."""
    import torch

    width, height = size
    target = (height // vae_scale_factor, width // vae_scale_factor)
    return torch.nn.functional.interpolate(latents, size=target, mode="bilinear", align_corners=False)


def upscale_images(
    images: list[Any],
    size: tuple[int, int],
    net: Any = None,
    *,
    device: str = "cpu",
    on_tile: Callable[[int, int], None] | None = None,
) -> list[Any]:
    """PIL images enlarged to `size`: through the ESRGAN `net` first when there is one. Blocking."""
    from PIL import Image

    if net is not None:
        from engines.image.esrgan_upscale import esrgan_upscale

        images = [esrgan_upscale(net, image, device=device, on_tile=on_tile) for image in images]
    return [image if image.size == size else image.resize(size, Image.Resampling.LANCZOS) for image in images]


def load_hires_upscaler(options: dict[str, Any], name: str, device: str) -> Any:
    """The RRDBNet the checkpoint's options.upscalers maps `name` to, or None (Lanczos alone). Blocking."""
    path = (options.get("upscalers") or {}).get(name)
    if path is None:
        return None
    from pathlib import Path

    from engines.image.esrgan import load_rrdbnet, weights_file

    return load_rrdbnet(weights_file(Path(path)), device=device)
