"""Image generation on diffusers: text-to-image, img2img and inpainting for SD 1.x and SDXL checkpoints."""
