"""The upscale step between the two passes of txt2img's hires fix.

A1111's hires fix draws the picture at the base size, enlarges it, and denoises the enlarged
picture again with img2img so that the new pixels get detail of their own. Novita's
`hires_fix.upscaler` names how the picture is enlarged:

- "Latent": the latents themselves, bilinearly (A1111's "Latent"); no VAE round trip.
- "RealESRGAN_x4plus_anime_6B", "RealESRNet_x4plus": named after ESRGAN models, which this server
  cannot load (engines/image/upscale.py says why); the decoded picture is resized with Lanczos
  instead, in image space as ESRGAN works, and the second pass adds the detail.
"""

from __future__ import annotations

from typing import Any

LATENT_UPSCALER = "Latent"
IMAGE_UPSCALERS = ("RealESRGAN_x4plus_anime_6B", "RealESRNet_x4plus")
HIRES_UPSCALERS = (LATENT_UPSCALER, *IMAGE_UPSCALERS)


def upscale_latents(latents: Any, size: tuple[int, int], vae_scale_factor: int) -> Any:
    """Latents (batch, channels, h, w) resized for an image of `size` (width, height)."""
    import torch

    width, height = size
    target = (height // vae_scale_factor, width // vae_scale_factor)
    return torch.nn.functional.interpolate(latents, size=target, mode="bilinear", align_corners=False)


def upscale_images(images: list[Any], size: tuple[int, int]) -> list[Any]:
    from PIL import Image

    return [image.resize(size, Image.Resampling.LANCZOS) for image in images]
